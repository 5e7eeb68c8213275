package main_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/testutil"
)

// Access control of the embedded server (SPEC §8 Security): with nats.auth
// set, the listener refuses clients without the credentials, and the CLI,
// given the same config, gets in.

// publishCLI runs `callbackd publish` for load event i with the instance's
// config and extra flags.
func publishCLI(t *testing.T, in *instance, i int, flags ...string) (stdout, stderr string, code int) {
	t.Helper()
	args := append([]string{"publish", "crawl_status", "--account", loadAccount, "--project", "1",
		"--data", fmt.Sprintf(`{"crawl_id":%d}`, i), "--msg-id", eventMsgID(i), "--config", in.config}, flags...)
	return testutil.RunBinary(t, 30*time.Second, in.bin, args...)
}

func dial(url string, opts ...nats.Option) error {
	nc, err := nats.Connect(url, append([]nats.Option{nats.Timeout(5 * time.Second), nats.MaxReconnects(0)}, opts...)...)
	if err == nil {
		nc.Close()
	}
	return err
}

func TestEmbeddedAuth_password_and_TLS_refuse_strangers_and_admit_the_CLI(t *testing.T) {
	skipShort(t)
	ca := testutil.NewCA(t)
	cert, key := ca.Issue(t, "nats")
	natsAddr := testutil.FreeAddr(t)
	in := newInstance(t, "a", fmt.Sprintf(`nats:
  listen: %s
  auth: {user: callbackd, password: s3cret}
  tls: {cert: %s, key: %s, ca: %s}
`, natsAddr, cert, key, ca.File))
	in.start(t)
	in.waitReady(t)
	url := "nats://" + natsAddr

	tlsOK := []nats.Option{nats.RootCAs(ca.File), nats.ClientCert(cert, key)}
	for name, opts := range map[string][]nats.Option{
		"no credentials":        tlsOK,
		"wrong password":        append([]nats.Option{nats.UserInfo("callbackd", "guess")}, tlsOK...),
		"no client certificate": {nats.RootCAs(ca.File), nats.UserInfo("callbackd", "s3cret")},
		"server not trusted":    {nats.UserInfo("callbackd", "s3cret")},
	} {
		if err := dial(url, opts...); err == nil {
			t.Errorf("%s: connected, want refused", name)
		} else {
			t.Logf("%s: refused: %v", name, err)
		}
	}

	nc, err := nats.Connect(url, append([]nats.Option{nats.UserInfo("callbackd", "s3cret")}, tlsOK...)...)
	if err != nil {
		t.Fatalf("client with credentials and certificate: %v", err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	sink := newLoadSink(t, 0)
	putAccountURL(t, js, 1, sink.URL)

	if out, errOut, code := publishCLI(t, in, 1); code != 0 {
		t.Fatalf("callbackd publish with serve's config: exit %d\n%s%s", code, out, errOut)
	}
	sink.waitUnique(t, 1, 30*time.Second)
	sink.check(t, 1, 2)

	_, errOut, code := publishCLI(t, in, 2, "--nats.auth.password", "guess")
	if code == 0 || !strings.Contains(strings.ToLower(errOut), "authorization") {
		t.Errorf("publish with a wrong password: exit %d, stderr %q; want a refusal naming authorization", code, errOut)
	}
	if strings.Contains(errOut, "guess") || strings.Contains(errOut, "s3cret") {
		t.Errorf("a password is in the error: %q", errOut)
	}
}

func TestEmbeddedAuth_token_refuses_anonymous_clients_and_admits_the_CLI(t *testing.T) {
	skipShort(t)
	natsAddr := testutil.FreeAddr(t)
	in := newInstance(t, "a", fmt.Sprintf("nats:\n  listen: %s\n  auth: {token: t0ken}\n", natsAddr))
	in.start(t)
	in.waitReady(t)
	url := "nats://" + natsAddr
	if err := dial(url); err == nil {
		t.Fatal("anonymous client connected, want refused")
	}
	nc, err := nats.Connect(url, nats.Token("t0ken"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	sink := newLoadSink(t, 0)
	putAccountURL(t, js, 1, sink.URL)
	if out, errOut, code := publishCLI(t, in, 1); code != 0 {
		t.Fatalf("callbackd publish with serve's config: exit %d\n%s%s", code, out, errOut)
	}
	sink.waitUnique(t, 1, 30*time.Second)
	sink.check(t, 1, 2)
}
