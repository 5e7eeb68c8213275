package main_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/embedded"
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
	waitSettings(t, putAccountURL(t, js, 1, sink.URL), in)

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
	waitSettings(t, putAccountURL(t, js, 1, sink.URL), in)
	if out, errOut, code := publishCLI(t, in, 1); code != 0 {
		t.Fatalf("callbackd publish with serve's config: exit %d\n%s%s", code, out, errOut)
	}
	sink.waitUnique(t, 1, 30*time.Second)
	sink.check(t, 1, 2)
	// A wrong token is refused as such, not taken for a server that is down.
	_, errOut, code := publishCLI(t, in, 2, "--nats.auth.token", "wr0ng")
	if code == 0 || !strings.Contains(errOut, "Authorization Violation") || strings.Contains(errOut, "is callbackd serve running") {
		t.Errorf("publish with a wrong token: exit %d, %q; want the refusal without the not-running hint", code, errOut)
	}
}

// An external NATS that requires a password and client certificates:
// serve connects with nats.auth and nats.tls, delivers, reports the lost
// connection on /readyz and in its log while the server is down, and
// reconnects and delivers again once it is back on the same address.
func TestExternalNATS_with_auth_and_TLS_survives_a_server_restart(t *testing.T) {
	skipShort(t)
	ca := testutil.NewCA(t)
	cert, key := ca.Issue(t, "nats")
	opts := embedded.Options{
		DataDir: t.TempDir(), Listen: testutil.FreeAddr(t), Logger: testutil.Logger(t),
		Auth: embedded.Auth{User: "callbackd", Password: "s3cret"},
		TLS:  embedded.TLSFiles{Cert: cert, Key: key, CA: ca.File},
	}
	startNATS := func() *embedded.Server {
		s, err := embedded.Start(context.Background(), opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Shutdown)
		return s
	}
	srv := startNATS()
	in := newInstance(t, "a", fmt.Sprintf(`nats:
  embedded: false
  url: nats://%s
  auth: {user: callbackd, password: s3cret}
  tls: {cert: %s, key: %s, ca: %s}
`, opts.Listen, cert, key, ca.File))
	in.start(t)
	in.waitReady(t)

	nc, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	sink := newLoadSink(t, 0)
	waitSettings(t, putAccountURL(t, js, 1, sink.URL), in)
	publishLoad(t, js, 1, 11)
	sink.waitUnique(t, 10, faultWait)
	nc.Close()

	srv.Shutdown()
	testutil.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		code, body, err := in.get("/readyz")
		if err != nil {
			return err
		}
		// The JetStream checks say so at once, not at their time limit.
		if code != 503 || !strings.Contains(body, "fail nats: not connected to NATS") || !strings.Contains(body, "fail streams: unknown: not connected to NATS") {
			return fmt.Errorf("/readyz with NATS down: %d %s", code, body)
		}
		return nil
	})
	// The client's status changes before its handler logs.
	testutil.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if !strings.Contains(in.proc.Stderr(), "nats disconnected; reconnecting") {
			return fmt.Errorf("no disconnect in the log:\n%s", in.proc.Stderr())
		}
		return nil
	})

	srv = startNATS()
	in.waitReady(t)
	testutil.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if !strings.Contains(in.proc.Stderr(), "nats reconnected") {
			return fmt.Errorf("no reconnect in the log:\n%s", in.proc.Stderr())
		}
		return nil
	})
	nc, err = srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ = jetstream.New(nc)
	publishLoad(t, js, 11, 21)
	sink.waitUnique(t, 20, faultWait)
	sink.check(t, 1, 21)
	if strings.Contains(in.proc.Stderr(), "s3cret") {
		t.Error("the password is in the log")
	}
}
