package api_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/callbackd/callbackd/api"
)

// The client's base URL may carry a path, userinfo or a query: requests go
// to <path>/graphql with the query kept, and no error repeats the userinfo
// or the query (SPEC §7: printed URLs drop both).
func TestClient_base_URL(t *testing.T) {
	var got string
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.URL.RequestURI()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"data":{}}`))
	}))
	t.Cleanup(hs.Close)
	host := strings.TrimPrefix(hs.URL, "http://")
	ctx := context.Background()

	for base, want := range map[string]string{
		hs.URL:             "/graphql",
		hs.URL + "/":       "/graphql",
		hs.URL + "/admin/": "/admin/graphql",
		"http://admin:hunter2@" + host + "/?sig=S": "/graphql?sig=S",
	} {
		c := &api.Client{BaseURL: base, Token: "t"}
		if err := c.Do(ctx, "{ x }", nil, nil); err != nil || got != want {
			t.Errorf("base %s: request to %q, %v; want %q", base, got, err, want)
		}
	}

	// Nothing listens: the error names the API without its secrets.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	for _, base := range []string{"http://admin:hunter2@" + addr + "/?sig=SECRET", "ftp://admin:hunter2@" + addr + "/?sig=SECRET"} {
		err := (&api.Client{BaseURL: base, Token: "t"}).Do(ctx, "{ x }", nil, nil)
		if err == nil || strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "admin:") || strings.Contains(err.Error(), "SECRET") || !strings.Contains(err.Error(), addr) {
			t.Errorf("base %s: error %v; want one naming %s without userinfo or query", base, err, addr)
		}
	}
	// A refused connection hints at the likely cause, as the NATS commands do.
	err = (&api.Client{BaseURL: "http://" + addr, Token: "t"}).Do(ctx, "{ x }", nil, nil)
	if err == nil || !strings.HasSuffix(err.Error(), "connection refused (is callbackd serve running?)") {
		t.Errorf("nothing listening: error %v; want the hint", err)
	}
}
