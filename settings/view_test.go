package settings_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/callbackd/callbackd/plugins"
	"github.com/callbackd/callbackd/settings"
	"github.com/callbackd/callbackd/subjects"
	"github.com/callbackd/callbackd/testutil"
)

func startView(t *testing.T) (*settings.Store, *settings.View) {
	t.Helper()
	_, store := openStore(t)
	return store, runView(t, store, settings.ViewOptions{})
}

// openStore opens the settings store on a JetStream of the test's own.
func openStore(t *testing.T) (context.Context, *settings.Store) {
	t.Helper()
	js := testutil.RunJetStream(t)
	ctx := testutil.Context(t)
	store, err := settings.OpenStore(ctx, js.JS, settings.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return ctx, store
}

// runView runs a View of store until the end of the test.
func runView(t *testing.T, store *settings.Store, o settings.ViewOptions) *settings.View {
	t.Helper()
	return watch(t, store, settings.NewView(testutil.Logger(t), o))
}

// watch runs view on store's bucket until the end of the test.
func watch(t *testing.T, store *settings.Store, view *settings.View) *settings.View {
	t.Helper()
	runCtx, cancel := context.WithCancel(testutil.Context(t))
	done := make(chan struct{})
	go func() { defer close(done); _ = view.Run(runCtx, store.KV()) }()
	t.Cleanup(func() { cancel(); <-done })
	return view
}

func waitReady(t *testing.T, v *settings.View) {
	t.Helper()
	select {
	case <-v.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("view not ready")
	}
}

func ptr(s string) *string { return &s }

func TestView_project_url_wins_over_account_url(t *testing.T) {
	store, view := startView(t)
	ctx := testutil.Context(t)
	waitReady(t, view)

	if _, ok := view.Destination("1", "2"); ok {
		t.Fatal("destination before any settings")
	}
	acctHeaders := []settings.Header{{Key: "X-Account", Value: "a"}}
	if _, err := store.UpdateAccount(ctx, "1", func(a *settings.Account) error {
		a.APICallbackURL, a.APICallbackHeaders = ptr("https://account.example.com/cb"), acctHeaders
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := plugins.Destination{URL: "https://account.example.com/cb", Headers: []plugins.Header{{Key: "X-Account", Value: "a"}}}
	checkDest(t, view, "1", "2", &want)

	// A project with headers but no URL does not take over.
	if _, err := store.UpdateProject(ctx, "2", func(p *settings.Project) error {
		p.APICallbackHeaders = []settings.Header{{Key: "X-Project", Value: "p"}}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	checkDest(t, view, "1", "2", &want)

	if _, err := store.UpdateProject(ctx, "2", func(p *settings.Project) error {
		p.APICallbackURL = ptr("https://project.example.com/cb")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// The project's URL travels with the project's headers, not the account's.
	checkDest(t, view, "1", "2", &plugins.Destination{URL: "https://project.example.com/cb", Headers: []plugins.Header{{Key: "X-Project", Value: "p"}}})
	// Another project of the account still gets the account's.
	checkDest(t, view, "1", "3", &want)

	// Clearing the project URL falls back to the account.
	if _, err := store.UpdateProject(ctx, "2", func(p *settings.Project) error { p.APICallbackURL = nil; return nil }); err != nil {
		t.Fatal(err)
	}
	checkDest(t, view, "1", "2", &want)
}

func TestView_invalid_value_keeps_last_valid(t *testing.T) {
	store, view := startView(t)
	ctx := testutil.Context(t)
	waitReady(t, view)
	kv := store.KV()
	if _, err := kv.Put(ctx, settings.ProjectKey("5"), []byte(`{"apiCallbackUrl":"https://ok.example.com/"}`)); err != nil {
		t.Fatal(err)
	}
	checkDest(t, view, "9", "5", &plugins.Destination{URL: "https://ok.example.com/"})
	// Written directly by an operator's tool: invalid, so ignored.
	if _, err := kv.Put(ctx, settings.ProjectKey("5"), []byte(`{"apiCallbackUrl":"https://bad.example.com/","apiCallbackHeaders":[{"key":"Host","value":"x"}]}`)); err != nil {
		t.Fatal(err)
	}
	// A later valid write to another key proves the bad one was processed.
	if _, err := kv.Put(ctx, settings.ProjectKey("6"), []byte(`{"apiCallbackUrl":"https://six.example.com/"}`)); err != nil {
		t.Fatal(err)
	}
	checkDest(t, view, "9", "6", &plugins.Destination{URL: "https://six.example.com/"})
	checkDest(t, view, "9", "5", &plugins.Destination{URL: "https://ok.example.com/"})
	// Delete removes it.
	if err := kv.Delete(ctx, settings.ProjectKey("5")); err != nil {
		t.Fatal(err)
	}
	checkDest(t, view, "9", "5", nil)
}

func TestView_loads_existing_values_before_ready(t *testing.T) {
	ctx, store := openStore(t)
	for i := 1; i <= 50; i++ {
		if _, err := store.UpdateProject(ctx, fmt.Sprint(i), func(p *settings.Project) error {
			p.APICallbackURL = ptr(fmt.Sprintf("https://p%d.example.com/", i))
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	view := settings.NewView(testutil.Logger(t), settings.ViewOptions{})
	go func() { _ = view.Run(ctx, store.KV()) }()
	waitReady(t, view)
	for i := 1; i <= 50; i++ {
		d, ok := view.Destination("1000", fmt.Sprint(i))
		if !ok || d.URL != fmt.Sprintf("https://p%d.example.com/", i) {
			t.Fatalf("project %d right after Ready: %+v %v", i, d, ok)
		}
	}
}

func TestView_sso_webhook(t *testing.T) {
	store, view := startView(t)
	ctx := testutil.Context(t)
	waitReady(t, view)
	if view.SSOWebhook("1") != nil {
		t.Fatal("sso webhook before settings")
	}
	if _, err := store.UpdateAccount(ctx, "1", func(a *settings.Account) error { a.SSOClientID = ptr("77"); return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := store.UpdateSSOClient(ctx, "77", func(c *settings.SSOClient) error {
		c.WebhookURL = ptr("https://sso.example.com/hook")
		c.WebhookHeaders = []settings.Header{{Key: "Authorization", Value: "Bearer s"}}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		got := view.SSOWebhook("1")
		want := &plugins.Destination{URL: "https://sso.example.com/hook", Headers: []plugins.Header{{Key: "Authorization", Value: "Bearer s"}}}
		if diff := cmp.Diff(want, got); diff != "" {
			return fmt.Errorf("SSOWebhook (-want +got):\n%s", diff)
		}
		return nil
	})
}

func TestStore_update_is_validated_and_atomic(t *testing.T) {
	store, _ := startView(t)
	ctx := testutil.Context(t)
	if _, err := store.UpdateProject(ctx, "1", func(p *settings.Project) error { p.APICallbackURL = ptr("https://a.example.com/"); return nil }); err != nil {
		t.Fatal(err)
	}
	_, err := store.UpdateProject(ctx, "1", func(p *settings.Project) error {
		p.APICallbackURL = ptr("https://b.example.com/")
		p.APICallbackHeaders = []settings.Header{{Key: "Connection", Value: "close"}}
		return nil
	})
	if err == nil {
		t.Fatal("invalid update accepted")
	}
	p, err := store.Project(ctx, "1")
	if err != nil || p.APICallbackURL == nil || *p.APICallbackURL != "https://a.example.com/" || len(p.APICallbackHeaders) != 0 {
		t.Fatalf("store changed by a rejected update: %+v %v", p, err)
	}
	if _, err := store.UpdateProject(ctx, "01", func(*settings.Project) error { return nil }); err == nil {
		t.Error("bad project id accepted")
	}
	// Concurrent writers: compare-and-set loses no update.
	errs := make(chan error, 10)
	for i := range 10 {
		go func() {
			_, err := store.UpdateProject(ctx, "2", func(p *settings.Project) error {
				p.APICallbackHeaders = append(p.APICallbackHeaders, settings.Header{Key: fmt.Sprintf("X-%d", i), Value: "v"})
				return nil
			})
			errs <- err
		}()
	}
	for range 10 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	p, err = store.Project(ctx, "2")
	if err != nil || len(p.APICallbackHeaders) != 10 {
		t.Fatalf("after 10 concurrent updates: %d headers, %v", len(p.APICallbackHeaders), err)
	}
}

func checkDest(t *testing.T, v *settings.View, account, project string, want *plugins.Destination) {
	t.Helper()
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		got, ok := v.Destination(account, project)
		if want == nil {
			if ok {
				return fmt.Errorf("destination %+v, want none", got)
			}
			return nil
		}
		if !ok {
			return fmt.Errorf("no destination, want %+v", *want)
		}
		if diff := cmp.Diff(*want, got); diff != "" {
			return fmt.Errorf("destination (-want +got):\n%s", diff)
		}
		return nil
	})
}

func TestView_revision_tells_when_a_write_is_in_use(t *testing.T) {
	ctx, store := openStore(t)
	first, err := store.KV().Put(ctx, "project.1", []byte(`{"apiCallbackUrl":"https://one.example.com/"}`))
	if err != nil {
		t.Fatal(err)
	}
	view := settings.NewView(testutil.Logger(t), settings.ViewOptions{})
	if got := view.Revision(); got != 0 {
		t.Fatalf("revision before loading: %d, want 0", got)
	}
	go func() { _ = view.Run(ctx, store.KV()) }()
	waitReady(t, view)
	if got := view.Revision(); got != first {
		t.Errorf("revision after the initial load: %d, want %d", got, first)
	}
	for i := 2; i <= 20; i++ {
		rev, err := store.KV().Put(ctx, "project.1", fmt.Appendf(nil, `{"apiCallbackUrl":"https://p%d.example.com/"}`, i))
		if err != nil {
			t.Fatal(err)
		}
		testutil.CheckFor(t, 10*time.Second, time.Millisecond, func() error {
			if got := view.Revision(); got < rev {
				return fmt.Errorf("revision %d, want %d", got, rev)
			}
			return nil
		})
		// Once the revision is reached, the write is what the view answers.
		if d, ok := view.Destination("9", "1"); !ok || d.URL != fmt.Sprintf("https://p%d.example.com/", i) {
			t.Fatalf("write %d: revision %d reached but destination is %+v %v", i, rev, d, ok)
		}
	}
}

// A restarted View, and the Store the API reads, agree with a running View
// on an invalid stored value: the last valid value in the key's history is
// in effect, and an update that leaves the URL out keeps that URL.
func TestStoreAndView_invalid_value_after_a_restart(t *testing.T) {
	ctx, store := openStore(t)
	kv := store.KV()
	for _, v := range []string{
		`{"apiCallbackUrl":"https://old.example.com/"}`,
		`{"apiCallbackUrl":"https://ok.example.com/"}`,
		`{"apiCallbackUrl":"ftp://bad"}`,
		`{"apiCallbackUrl":"https://x.example.com/","apiCallbackHeaders":[{"key":"Host","value":"x"}]}`,
	} {
		if _, err := kv.Put(ctx, settings.ProjectKey("5"), []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	// Valid, then deleted, then invalid: none is in effect.
	for _, v := range []string{`{"apiCallbackUrl":"https://gone.example.com/"}`, "", `{"apiCallbackUrl":""}`} {
		var err error
		if v == "" {
			err = kv.Delete(ctx, settings.ProjectKey("6"))
		} else {
			_, err = kv.Put(ctx, settings.ProjectKey("6"), []byte(v))
		}
		if err != nil {
			t.Fatal(err)
		}
	}

	view := runView(t, store, settings.ViewOptions{})
	waitReady(t, view)
	checkDest(t, view, "9", "5", &plugins.Destination{URL: "https://ok.example.com/"})
	checkDest(t, view, "9", "6", nil)

	p, err := store.Project(ctx, "5")
	if err != nil {
		t.Fatal(err)
	}
	if p.APICallbackURL == nil || *p.APICallbackURL != "https://ok.example.com/" {
		t.Errorf("Store.Project(5) URL = %v, want the last valid https://ok.example.com/", p.APICallbackURL)
	}
	if p, err = store.Project(ctx, "6"); err != nil || p.APICallbackURL != nil {
		t.Errorf("Store.Project(6) = %+v, %v; want no URL (deleted before the invalid value)", p, err)
	}

	// Headers only: the URL in effect stays, and the stored value is valid again.
	if _, err := store.UpdateProject(ctx, "5", func(p *settings.Project) error {
		p.APICallbackHeaders = []settings.Header{{Key: "X-New", Value: "v"}}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	checkDest(t, view, "9", "5", &plugins.Destination{URL: "https://ok.example.com/", Headers: []plugins.Header{{Key: "X-New", Value: "v"}}})
}

// With an outbound policy, a stored URL whose host is a literal IP the
// policy refuses (the API refuses to store it) stays in effect with a
// warning, so its deliveries end as destination_not_allowed instead of the
// events being acked as no_destination; a key whose id is not an ID is
// ignored.
func TestView_keeps_a_refused_literal_IP_in_effect_and_warns(t *testing.T) {
	ctx, store := openStore(t)
	var logs testutil.SyncBuffer
	view := watch(t, store, settings.NewView(slog.New(slog.NewTextHandler(&logs, nil)), settings.ViewOptions{Guard: plugins.NewGuard(false, nil)}))
	waitReady(t, view)

	kv := store.KV()
	puts := []struct{ key, value string }{
		{settings.ProjectKey("5"), `{"apiCallbackUrl":"https://ok.example.com/"}`},
		{settings.ProjectKey("5"), `{"apiCallbackUrl":"http://127.0.0.1:9/loop"}`},
		{settings.AccountKey("9"), `{"apiCallbackUrl":"http://[::1]/","ssoClientId":"77"}`},
		{settings.SSOClientKey("77"), `{"webhookUrl":"http://2130706433/"}`},
		{"project.0123", `{"apiCallbackUrl":"https://zero.example.com/"}`},
		{settings.ProjectKey("7"), `{"apiCallbackUrl":"https://seven.example.com/"}`}, // the last, processed after the others
	}
	for _, p := range puts {
		if _, err := kv.Put(ctx, p.key, []byte(p.value)); err != nil {
			t.Fatal(err)
		}
	}
	checkDest(t, view, "9", "7", &plugins.Destination{URL: "https://seven.example.com/"})
	checkDest(t, view, "9", "5", &plugins.Destination{URL: "http://127.0.0.1:9/loop"})
	checkDest(t, view, "9", "123", &plugins.Destination{URL: "http://[::1]/"})
	if d := view.SSOWebhook("9"); d == nil || d.URL != "http://2130706433/" {
		t.Errorf("SSOWebhook(9) = %+v; want the stored literal IP", d)
	}
	if p, err := store.Project(ctx, "5"); err != nil || p.APICallbackURL == nil || *p.APICallbackURL != "http://127.0.0.1:9/loop" {
		t.Errorf("Store.Project(5) = %+v, %v; want the URL in effect", p, err)
	}
	for _, key := range []string{"project.5", "account.9", "ssoclient.77"} {
		if !hasLine(logs.String(), "refused by the outbound policy", "key="+key) {
			t.Errorf("no warning about %s's refused host in:\n%s", key, logs.String())
		}
	}
	if !hasLine(logs.String(), "invalid id", "key=project.0123") {
		t.Errorf("no warning about project.0123 in:\n%s", logs.String())
	}
}

// The bucket keeps settings.History revisions of a key; the View holds the
// value in effect however many invalid writes follow it, and the Store
// (the API) reads an invalid key from the View, so the two agree and an
// update that leaves the URL out keeps it.
func TestStore_reads_an_invalid_key_from_the_view(t *testing.T) {
	js := testutil.RunJetStream(t)
	ctx := testutil.Context(t)
	view := settings.NewView(testutil.Logger(t), settings.ViewOptions{})
	store, err := settings.OpenStore(ctx, js.JS, settings.StoreOptions{View: view})
	if err != nil {
		t.Fatal(err)
	}
	watch(t, store, view)
	waitReady(t, view)

	kv := store.KV()
	puts := map[string]string{
		settings.ProjectKey("5"):    `{"apiCallbackUrl":"https://ok.example.com/","apiCallbackHeaders":[{"key":"X-A","value":"a"}]}`,
		settings.AccountKey("9"):    `{"apiCallbackUrl":"https://acct.example.com/","ssoClientId":"77"}`,
		settings.SSOClientKey("77"): `{"webhookHeaders":[{"key":"X-S","value":"s"}]}`,
	}
	var rev uint64
	for key, v := range puts {
		valid, err := kv.Put(ctx, key, []byte(v))
		if err != nil {
			t.Fatal(err)
		}
		// In effect before the invalid writes: a watch that lagged behind
		// History writes to one key would never see it (the stream drops
		// it first).
		waitRevision(t, view, valid)
		for range settings.History + 6 {
			if rev, err = kv.Put(ctx, key, []byte("garbage")); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitRevision(t, view, rev)
	checkDest(t, view, "9", "5", &plugins.Destination{URL: "https://ok.example.com/", Headers: []plugins.Header{{Key: "X-A", Value: "a"}}})

	p, err := store.Project(ctx, "5")
	if want := (settings.Project{APICallbackURL: ptr("https://ok.example.com/"), APICallbackHeaders: []settings.Header{{Key: "X-A", Value: "a"}}}); err != nil || !cmp.Equal(p, want) {
		t.Errorf("Store.Project(5) = %+v, %v; want %+v", p, err, want)
	}
	a, err := store.Account(ctx, "9")
	if want := (settings.Account{APICallbackURL: ptr("https://acct.example.com/"), SSOClientID: ptr("77")}); err != nil || !cmp.Equal(a, want) {
		t.Errorf("Store.Account(9) = %+v, %v; want %+v", a, err, want)
	}
	c, err := store.SSOClient(ctx, "77")
	if want := (settings.SSOClient{WebhookHeaders: []settings.Header{{Key: "X-S", Value: "s"}}}); err != nil || !cmp.Equal(c, want) {
		t.Errorf("Store.SSOClient(77) = %+v, %v; want %+v", c, err, want)
	}

	// An update that leaves the URL out starts from the value in effect.
	got, err := store.UpdateProject(ctx, "5", func(p *settings.Project) error {
		p.APICallbackHeaders = []settings.Header{{Key: "X-B", Value: "b"}}
		return nil
	})
	if want := (settings.Project{APICallbackURL: ptr("https://ok.example.com/"), APICallbackHeaders: []settings.Header{{Key: "X-B", Value: "b"}}}); err != nil || !cmp.Equal(got, want) {
		t.Errorf("UpdateProject(5) = %+v, %v; want %+v", got, err, want)
	}
	checkDest(t, view, "9", "5", &plugins.Destination{URL: "https://ok.example.com/", Headers: []plugins.Header{{Key: "X-B", Value: "b"}}})

	// A stored null is not a project: ignored like any invalid value.
	if rev, err = kv.Put(ctx, settings.ProjectKey("5"), []byte("null")); err != nil {
		t.Fatal(err)
	}
	waitRevision(t, view, rev)
	checkDest(t, view, "9", "5", &plugins.Destination{URL: "https://ok.example.com/", Headers: []plugins.Header{{Key: "X-B", Value: "b"}}})
}

// hasLine reports whether a line of logs holds every one of parts.
func hasLine(logs string, parts ...string) bool {
	for line := range strings.Lines(logs) {
		if !slices.ContainsFunc(parts, func(p string) bool { return !strings.Contains(line, p) }) {
			return true
		}
	}
	return false
}

func waitRevision(t *testing.T, v *settings.View, rev uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for v.Revision() < rev {
		if time.Now().After(deadline) {
			t.Fatalf("view at revision %d, want %d", v.Revision(), rev)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A watch whose consumer is deleted from outside stalls without an error
// (nats.go notices only after missed heartbeats, ten seconds or more): the
// view finds the bucket ahead of it, makes the watch again and applies the
// change within a few check periods. A deleted bucket breaks the view,
// which keeps its last values and reports itself stale after StaleAfter.
func TestView_a_stalled_watch_is_made_again(t *testing.T) {
	js := testutil.RunJetStream(t)
	ctx := testutil.Context(t)
	store, err := settings.OpenStore(ctx, js.JS, settings.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	view := runView(t, store, settings.ViewOptions{CheckEvery: 100 * time.Millisecond})
	waitReady(t, view)
	kv := store.KV()
	if _, err := kv.Put(ctx, settings.ProjectKey("5"), []byte(`{"apiCallbackUrl":"https://one.example.com/"}`)); err != nil {
		t.Fatal(err)
	}
	checkDest(t, view, "9", "5", &plugins.Destination{URL: "https://one.example.com/"})

	stream, err := js.JS.Stream(ctx, "KV_"+subjects.SettingsBucket)
	if err != nil {
		t.Fatal(err)
	}
	names := stream.ConsumerNames(ctx)
	n := 0
	for name := range names.Name() {
		if err := stream.DeleteConsumer(ctx, name); err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n == 0 {
		t.Fatalf("no watch consumer on the bucket (%v)", names.Err())
	}
	if _, err := kv.Put(ctx, settings.ProjectKey("5"), []byte(`{"apiCallbackUrl":"https://two.example.com/"}`)); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 4*time.Second, 10*time.Millisecond, func() error {
		if d, _ := view.Destination("9", "5"); d.URL != "https://two.example.com/" {
			return fmt.Errorf("destination %q, want the new URL", d.URL)
		}
		return nil
	})
	if err := view.Err(); err != nil {
		t.Errorf("view stale after the watch was made again: %v", err)
	}

	if err := js.JS.DeleteKeyValue(ctx, subjects.SettingsBucket); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, settings.StaleAfter+3*time.Second, 50*time.Millisecond, func() error {
		if view.Err() == nil {
			return errors.New("view not stale")
		}
		return nil
	})
	if d, _ := view.Destination("9", "5"); d.URL != "https://two.example.com/" {
		t.Errorf("destination %q after the bucket went, want the last one kept", d.URL)
	}

	// The bucket made again, empty: not taken for "no settings", which
	// would ack every waiting event as no_destination. The view is kept
	// and stays stale.
	store2, err := settings.OpenStore(ctx, js.JS, settings.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		if err := view.Err(); err == nil || !strings.Contains(err.Error(), "came back empty") {
			return fmt.Errorf("view error %v, want the bucket's coming back empty", err)
		}
		return nil
	})
	if d, ok := view.Destination("9", "5"); !ok || d.URL != "https://two.example.com/" {
		t.Errorf("destination %q, %v with the bucket empty, want the last one kept", d.URL, ok)
	}
	// Settings written back are taken once the bucket has been quiet for
	// StaleAfter, not at the first write.
	written := time.Now()
	if _, err := store2.KV().Put(ctx, settings.ProjectKey("5"), []byte(`{"apiCallbackUrl":"https://three.example.com/"}`)); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, settings.StaleAfter+10*time.Second, 50*time.Millisecond, func() error {
		if err := view.Err(); err != nil {
			return err
		}
		if d, _ := view.Destination("9", "5"); d.URL != "https://three.example.com/" {
			return fmt.Errorf("destination %q, want the one written back", d.URL)
		}
		return nil
	})
	if took := time.Since(written); took < settings.StaleAfter {
		t.Errorf("settings written back were taken after %v, before the bucket had been quiet for %v", took, settings.StaleAfter)
	}

	// Its stream purged from outside, which the watch is not told: the
	// same as coming back empty.
	stream, err = js.JS.Stream(ctx, "KV_"+subjects.SettingsBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Purge(ctx); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, settings.StaleAfter+10*time.Second, 50*time.Millisecond, func() error {
		if err := view.Err(); err == nil || !strings.Contains(err.Error(), "came back empty") {
			return fmt.Errorf("view error %v after a purge, want the bucket's coming back empty", err)
		}
		return nil
	})
	if d, ok := view.Destination("9", "5"); !ok || d.URL != "https://three.example.com/" {
		t.Errorf("destination %q, %v after a purge, want the last one kept (paused)", d.URL, ok)
	}
}

// A change while running is logged by key and revision, never by value:
// the trail of who changed what, through the API or the bucket itself.
// The initial load is not logged key by key.
func TestView_logs_changes_by_key_never_values(t *testing.T) {
	ctx, store := openStore(t)
	kv := store.KV()
	if _, err := kv.Put(ctx, settings.ProjectKey("1"), []byte(`{"apiCallbackUrl":"https://one.example.com/"}`)); err != nil {
		t.Fatal(err)
	}
	var logs testutil.SyncBuffer
	view := watch(t, store, settings.NewView(slog.New(slog.NewTextHandler(&logs, nil)), settings.ViewOptions{}))
	waitReady(t, view)

	rev, err := kv.Put(ctx, settings.ProjectKey("2"), []byte(`{"apiCallbackUrl":"https://two.example.com/?sig=s3cret","apiCallbackHeaders":[{"key":"X-Token","value":"s3cret"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, settings.ProjectKey("1")); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		s := logs.String()
		if !strings.Contains(s, fmt.Sprintf(`msg="settings: changed" key=project.2 revision=%d`, rev)) ||
			!strings.Contains(s, `msg="settings: removed" key=project.1`) {
			return fmt.Errorf("log:\n%s", s)
		}
		return nil
	})
	s := logs.String()
	if strings.Contains(s, "s3cret") || strings.Contains(s, "two.example.com") {
		t.Errorf("a value in the log:\n%s", s)
	}
	if strings.Count(s, "settings: changed") != 1 {
		t.Errorf("the initial load logged key by key:\n%s", s)
	}
}
