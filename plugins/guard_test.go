package plugins

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestGuard_Allowed(t *testing.T) {
	def := NewGuard(false, nil)
	tests := []struct {
		ip      string
		refused string // the range named in the error; "" when allowed
	}{
		// Public addresses, including the neighbours of refused ranges.
		{"8.8.8.8", ""},
		{"1.1.1.1", ""},
		{"1.0.0.0", ""},
		{"9.255.255.255", ""},
		{"11.0.0.0", ""},
		{"100.63.255.255", ""},
		{"100.128.0.0", ""},
		{"126.255.255.255", ""},
		{"128.0.0.0", ""},
		{"169.253.255.255", ""},
		{"169.255.0.0", ""},
		{"172.15.255.255", ""},
		{"172.32.0.0", ""},
		{"191.255.255.255", ""},
		{"192.0.1.0", ""},
		{"192.167.255.255", ""},
		{"192.169.0.0", ""},
		{"198.17.255.255", ""},
		{"198.20.0.0", ""},
		{"223.255.255.255", ""},
		{"2606:4700:4700::1111", ""},
		{"2001:4860:4860::8888", ""},
		{"::2", "0.0.0.0/8"}, // IPv4-compatible 0.0.0.2
		{"::1:0:0:2", ""},
		{"64:ff9a:ffff::1", ""},
		{"64:ff9b::1:0:0:1", ""}, // outside the /96
		{"fbff:ffff::1", ""},
		{"fe00::1", ""},
		{"::ffff:8.8.8.8", ""},
		{"::ffff:100.128.0.1", ""},

		// SPEC §3's list.
		{"0.0.0.0", "0.0.0.0/8"},
		{"0.1.2.3", "0.0.0.0/8"},
		{"10.0.0.1", "10.0.0.0/8"},
		{"10.255.255.255", "10.0.0.0/8"},
		{"100.64.0.1", "100.64.0.0/10"},
		{"100.127.255.255", "100.64.0.0/10"},
		{"127.0.0.1", "127.0.0.0/8"},
		{"127.255.255.254", "127.0.0.0/8"},
		{"169.254.169.254", "169.254.0.0/16"},
		{"172.16.0.1", "172.16.0.0/12"},
		{"172.31.255.255", "172.16.0.0/12"},
		{"192.0.0.8", "192.0.0.0/24"},
		{"192.168.1.1", "192.168.0.0/16"},
		{"198.18.0.1", "198.18.0.0/15"},
		{"198.19.255.255", "198.18.0.0/15"},
		{"224.0.0.1", "224.0.0.0/4"},
		{"239.255.255.250", "224.0.0.0/4"},
		{"255.255.255.255", "255.255.255.255/32"},
		{"::", "::/128"},
		{"::1", "::1/128"},
		{"fc00::1", "fc00::/7"},
		{"fd12:3456:789a::1", "fc00::/7"},
		{"fe80::1", "fe80::/10"},
		{"fe80::1%eth0", "fe80::/10"},
		{"febf::1", "fe80::/10"},
		{"ff02::1", "ff00::/8"},
		{"ff05::1:3", "ff00::/8"},
		{"64:ff9b::7f00:1", "64:ff9b::/96"},
		{"64:ff9b::808:808", "64:ff9b::/96"},

		// IPv4-mapped IPv6 forms of refused addresses.
		{"::ffff:127.0.0.1", "127.0.0.0/8"},
		{"::ffff:10.1.2.3", "10.0.0.0/8"},
		{"::ffff:169.254.169.254", "169.254.0.0/16"},
		{"::ffff:0.0.0.0", "0.0.0.0/8"},
		{"::ffff:100.64.0.1", "100.64.0.0/10"},
		{"::ffff:224.0.0.1", "224.0.0.0/4"},
		{"::ffff:255.255.255.255", "255.255.255.255/32"},

		// Beyond SPEC §3's list, same intent.
		{"240.0.0.1", "240.0.0.0/4"},
		{"64:ff9b:1::a00:1", "64:ff9b:1::/48"},
		{"fec0::1", "fec0::/10"},
	}
	for _, tt := range tests {
		t.Run(tt.ip, func(t *testing.T) {
			ip := netip.MustParseAddr(tt.ip)
			err := def.Allowed(ip)
			if tt.refused == "" {
				if err != nil {
					t.Fatalf("Allowed(%s) = %v, want nil", tt.ip, err)
				}
			} else {
				if !errors.Is(err, ErrDestinationNotAllowed) {
					t.Fatalf("Allowed(%s) = %v, want ErrDestinationNotAllowed", tt.ip, err)
				}
				msg := err.Error()
				if !strings.Contains(msg, ip.WithZone("").String()) || !strings.Contains(msg, tt.refused) {
					t.Fatalf("Allowed(%s) error %q should name the IP and %s", tt.ip, msg, tt.refused)
				}
			}
			if err := NewGuard(true, nil).Allowed(ip); err != nil {
				t.Fatalf("allowPrivate: Allowed(%s) = %v, want nil", tt.ip, err)
			}
		})
	}
}

func TestGuard_Allowed_invalid_address_is_refused(t *testing.T) {
	for _, g := range []*Guard{NewGuard(false, nil), NewGuard(true, nil)} {
		if err := g.Allowed(netip.Addr{}); !errors.Is(err, ErrDestinationNotAllowed) {
			t.Fatalf("Allowed(zero) = %v, want ErrDestinationNotAllowed", err)
		}
	}
}

func TestGuard_allow_CIDRs_exempt_their_ranges(t *testing.T) {
	g := NewGuard(false, []netip.Prefix{
		netip.MustParsePrefix("10.1.0.0/16"),
		netip.MustParsePrefix("fd00:1::/32"),
		netip.MustParsePrefix("127.0.0.1/8"), // host bits set: masked
		{},                                   // invalid: ignored
	})
	for ip, allowed := range map[string]bool{
		"10.1.2.3":           true,
		"::ffff:10.1.2.3":    true, // matched by its IPv4 form
		"10.2.0.1":           false,
		"fd00:1::5":          true,
		"fd00:2::5":          false,
		"127.0.0.1":          true,
		"127.9.9.9":          true,
		"192.168.0.1":        false,
		"::1":                false,
		"8.8.8.8":            true,
		"169.254.169.254":    false,
		"::ffff:192.168.0.1": false,
	} {
		err := g.Allowed(netip.MustParseAddr(ip))
		if allowed && err != nil {
			t.Errorf("Allowed(%s) = %v, want nil", ip, err)
		}
		if !allowed && !errors.Is(err, ErrDestinationNotAllowed) {
			t.Errorf("Allowed(%s) = %v, want ErrDestinationNotAllowed", ip, err)
		}
	}
}

// Go dials [::ffff:a.b.c.d] over IPv4, so an IPv4-mapped allow entry must
// exempt the IPv4 form as well, or the API (which sees the mapped literal)
// and the dial (which sees the IPv4 address) disagree.
func TestGuard_mapped_allow_prefix_covers_ipv4(t *testing.T) {
	g := NewGuard(false, []netip.Prefix{netip.MustParsePrefix("::ffff:127.0.0.0/104")})
	for ip, allowed := range map[string]bool{
		"127.0.0.1":        true,
		"127.200.0.1":      true,
		"::ffff:127.0.0.1": true,
		"10.0.0.1":         false,
		"::1":              false,
	} {
		if err := g.Allowed(netip.MustParseAddr(ip)); (err == nil) != allowed {
			t.Errorf("Allowed(%s) = %v, want allowed %v", ip, err, allowed)
		}
	}
	if err := g.CheckURLHost("[::ffff:127.0.0.1]:80"); err != nil {
		t.Errorf("CheckURLHost(mapped) = %v", err)
	}
}

// IPv6 forms that carry an IPv4 address reach it through a tunnel or a
// translator: they are judged by it as well.
func TestGuard_IPv6_forms_carrying_IPv4(t *testing.T) {
	g := NewGuard(false, nil)
	for ip, want := range map[string]string{
		"::127.0.0.1":        "destination not allowed: ::7f00:1 (IPv4-compatible 127.0.0.1) is in 127.0.0.0/8 (loopback)",
		"::ffff:0:10.0.0.1":  "destination not allowed: ::ffff:0:a00:1 (SIIT 10.0.0.1) is in 10.0.0.0/8 (private)",
		"2002:c0a8:101::1":   "destination not allowed: 2002:c0a8:101::1 (6to4 192.168.1.1) is in 192.168.0.0/16 (private)",
		"::1":                "destination not allowed: ::1 is in ::1/128 (loopback)",
		"::":                 "destination not allowed: :: is in ::/128 (unspecified)",
		"2002:808:808::1":    "", // 6to4 of 8.8.8.8
		"::8.8.8.8":          "",
		"2606:4700:4700::64": "",
	} {
		err := g.Allowed(netip.MustParseAddr(ip))
		switch {
		case want == "" && err != nil:
			t.Errorf("Allowed(%s) = %v, want nil", ip, err)
		case want != "" && (err == nil || err.Error() != want):
			t.Errorf("Allowed(%s) = %v, want %q", ip, err, want)
		}
	}
	// An allowed range exempts its forms too.
	if err := NewGuard(false, []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24")}).Allowed(netip.MustParseAddr("2002:c0a8:101::1")); err != nil {
		t.Errorf("allowed 192.168.1.0/24: 6to4 form refused: %v", err)
	}
}

// The refusal says which range holds the address, as a value a transport
// can read as well as text.
func TestGuard_refusal_is_a_NotAllowedError(t *testing.T) {
	g := NewGuard(false, nil)
	for ip, want := range map[string]string{
		"127.0.0.1":          "destination not allowed: 127.0.0.1 is in 127.0.0.0/8 (loopback)",
		"::ffff:192.168.0.1": "destination not allowed: ::ffff:192.168.0.1 (IPv4-mapped 192.168.0.1) is in 192.168.0.0/16 (private)",
	} {
		err := g.Allowed(netip.MustParseAddr(ip))
		var nae *NotAllowedError
		if !errors.As(err, &nae) || err.Error() != want {
			t.Errorf("Allowed(%s) = %v, want %q as a *NotAllowedError", ip, err, want)
			continue
		}
		if !errors.Is(err, ErrDestinationNotAllowed) || nae.Name == "" || !nae.Range.Contains(nae.IP.Unmap()) {
			t.Errorf("Allowed(%s): %+v", ip, nae)
		}
	}
}

func TestGuard_CheckURLHost(t *testing.T) {
	g := NewGuard(false, nil)
	for host, refused := range map[string]bool{
		"example.com":            false,
		"example.com:8443":       false,
		"localhost":              false, // a name: checked at dial time
		"8.8.8.8":                false,
		"8.8.8.8:443":            false,
		"[2606:4700:4700::1111]": false,
		"2606:4700:4700::1111":   false,
		"127.0.0.1":              true,
		"127.0.0.1:8080":         true,
		"[::1]":                  true,
		"[::1]:8080":             true,
		"::1":                    true,
		"[fe80::1%eth0]:80":      true,
		"[::ffff:10.0.0.1]":      true,
		"169.254.169.254":        true,
		"127.1":                  true,
		"2130706433":             true,
		"0x7f000001":             true,
		"0177.0.0.1":             true,
		"0x7f.1":                 true,
		"10.0.0.1.":              true,
		"134744072":              false, // 8.8.8.8
		"cafe.babe":              false,
		"1.2.3.4.5":              false,
		"256.1.1.1":              false,
		"09.1.1.1":               false, // bad octal: a name to resolvers too
	} {
		err := g.CheckURLHost(host)
		if refused && !errors.Is(err, ErrDestinationNotAllowed) {
			t.Errorf("CheckURLHost(%q) = %v, want ErrDestinationNotAllowed", host, err)
		}
		if !refused && err != nil {
			t.Errorf("CheckURLHost(%q) = %v, want nil", host, err)
		}
	}
	if err := NewGuard(true, nil).CheckURLHost("127.0.0.1:80"); err != nil {
		t.Errorf("allowPrivate: CheckURLHost = %v, want nil", err)
	}
}

// TestGuard_DialContext dials a real loopback server through http.Transport,
// the way transports use the guard.
func TestGuard_DialContext(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("ok"))
	}))
	t.Cleanup(srv.Close)
	_, port, err := net.SplitHostPort(srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	get := func(g *Guard, url string) error {
		t.Helper()
		tr := &http.Transport{Proxy: nil, DialContext: g.DialContext}
		t.Cleanup(tr.CloseIdleConnections)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			return err
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d", resp.StatusCode)
		}
		return nil
	}

	t.Run("refused by default", func(t *testing.T) {
		err := get(NewGuard(false, nil), srv.URL)
		if !errors.Is(err, ErrDestinationNotAllowed) {
			t.Fatalf("err = %v, want ErrDestinationNotAllowed", err)
		}
		if !strings.Contains(err.Error(), "127.0.0.0/8") {
			t.Fatalf("err = %v, want the range named", err)
		}
	})
	t.Run("name resolving to loopback refused", func(t *testing.T) {
		err := get(NewGuard(false, nil), "http://localhost:"+port+"/")
		if !errors.Is(err, ErrDestinationNotAllowed) {
			t.Fatalf("err = %v, want ErrDestinationNotAllowed", err)
		}
	})
	t.Run("allowPrivate", func(t *testing.T) {
		if err := get(NewGuard(true, nil), srv.URL); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("allowCIDRs", func(t *testing.T) {
		g := NewGuard(false, []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")})
		if err := get(g, srv.URL); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("other CIDR allowed is not enough", func(t *testing.T) {
		g := NewGuard(false, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")})
		if err := get(g, srv.URL); !errors.Is(err, ErrDestinationNotAllowed) {
			t.Fatalf("err = %v, want ErrDestinationNotAllowed", err)
		}
	})
}

func TestGuard_DialContext_refuses_non_IP_networks(t *testing.T) {
	g := NewGuard(true, nil)
	conn, err := g.DialContext(context.Background(), "unix", "/var/run/docker.sock")
	if err == nil {
		_ = conn.Close()
	}
	if !errors.Is(err, ErrDestinationNotAllowed) {
		t.Fatalf("err = %v, want ErrDestinationNotAllowed", err)
	}
}

func TestNotURIChar(t *testing.T) {
	for in, want := range map[string]int{
		"https://e.com/a%20b/%C3%A9?q=a+b&r=%2F&s=~!$'()*,;=:@/?#f": -1,
		"http://e.com/s?x=a b": 18,
		"http://e.com/?q=é":    16,
		"http://e.com/\t":      13,
		"http://e.com/\x7f":    13,
		"http://e.com/?a|b":    15,
		`http://e.com/"`:       13,
		"http://e.com/<>":      13,
		`http://e.com/\`:       13,
		"http://e.com/^`{}":    13,
		"":                     -1,
	} {
		if got := NotURIChar(in); got != want {
			t.Errorf("NotURIChar(%q) = %d, want %d", in, got, want)
		}
	}
}
