package api_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/callbackd/callbackd/plugins"
	"github.com/callbackd/callbackd/plugins/builtin"
)

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }

func allowPrivateGuard() *plugins.Guard { return plugins.NewGuard(true, nil) }

func newTransport(t testing.TB, allowPrivate bool) *builtin.HTTPForm {
	tr := builtin.NewHTTPForm(builtin.HTTPFormOptions{
		Timeout:   10 * time.Second,
		UserAgent: "callbackd/test",
		Guard:     plugins.NewGuard(allowPrivate, nil),
	})
	t.Cleanup(tr.Close)
	return tr
}
