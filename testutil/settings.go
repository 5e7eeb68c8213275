package testutil

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// WaitSettingsRevision waits until the callbackd serve whose admin API is
// at apiAddr (host:port) reports on /metrics that its settings view has
// applied revision rev of the settings bucket (callbackd_settings_revision),
// so that events published next find the settings written before. token
// is the admin token.
func WaitSettingsRevision(t testing.TB, apiAddr, token string, rev uint64) {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		req, err := http.NewRequest(http.MethodGet, "http://"+apiAddr+"/metrics", nil)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/metrics: HTTP %d", resp.StatusCode)
		}
		for line := range strings.Lines(string(body)) {
			v, ok := strings.CutPrefix(line, "callbackd_settings_revision ")
			if !ok {
				continue
			}
			got, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return err
			}
			if uint64(got) < rev {
				return fmt.Errorf("%s: settings revision %v, want %d", apiAddr, got, rev)
			}
			return nil
		}
		return errors.New("no callbackd_settings_revision on /metrics")
	})
}
