package settings

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/plugins"
	"github.com/callbackd/callbackd/subjects"
)

// StaleAfter is how long a broken watch may last before the View reports
// itself stale (SPEC §3 "Settings first": consuming pauses after 5 s).
const StaleAfter = 5 * time.Second

// target is a URL with its headers, ready for the transport.
type target struct {
	dest plugins.Destination
	set  bool // dest.URL is set
}

type accountEntry struct {
	target
	ssoClientID string
}

// snapshot is one consistent set of settings.
type snapshot struct {
	projects map[string]target
	accounts map[string]accountEntry
	sso      map[string]target
}

func newSnapshot() *snapshot {
	return &snapshot{projects: map[string]target{}, accounts: map[string]accountEntry{}, sso: map[string]target{}}
}

func (s *snapshot) size() int { return len(s.projects) + len(s.accounts) + len(s.sso) }

// View is an in-memory copy of the settings bucket kept current by a KV
// watch, so resolving an event's destination touches no network. Safe for
// concurrent use.
type View struct {
	log   *slog.Logger
	guard *plugins.Guard

	mu       sync.RWMutex
	cur      *snapshot
	brokenAt time.Time   // zero while the watch is healthy
	broken   atomic.Bool // !brokenAt.IsZero(), read without the lock
	brokeErr error

	ready     chan struct{}
	readyOnce sync.Once
	// rev is the bucket revision the view has applied.
	rev atomic.Uint64
	// live is set while a watch has loaded its initial values and applies
	// updates as they come.
	live       atomic.Bool
	checkEvery time.Duration
	// emptied is set (under mu) while a re-watch finds the bucket empty
	// where the view had settings; see reloadable.
	emptied bool
}

// ViewOptions configure a View. The zero value checks no outbound policy.
type ViewOptions struct {
	// Guard is the outbound policy. A stored URL whose host is a literal
	// IP it refuses, which the API refuses to store (SPEC §3), is warned
	// about but kept in effect: deliveries to it end at dial time as
	// destination_not_allowed (dead-lettered, reported, replayable once
	// the policy or the URL changes) rather than being acked as
	// no_destination. nil checks nothing.
	Guard *plugins.Guard
	// CheckEvery is how often a live view compares its revision with the
	// bucket's to find a stalled watch (0 → 1 s).
	CheckEvery time.Duration
}

// NewView returns an empty View; Run fills it.
func NewView(log *slog.Logger, o ViewOptions) *View {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &View{log: log, guard: o.Guard, cur: newSnapshot(), ready: make(chan struct{}), checkEvery: cmp.Or(o.CheckEvery, time.Second)}
}

// Revision is the revision of the settings bucket that the view has
// applied: a setting written at revision r is in use once Revision() ≥ r.
// It is 0 until the initial values are loaded.
func (v *View) Revision() uint64 { return v.rev.Load() }

// Ready is closed once the watch has delivered the bucket's initial values.
func (v *View) Ready() <-chan struct{} { return v.ready }

// Err is non-nil while the watch has been broken for longer than StaleAfter;
// the View then still answers with the last values it had.
func (v *View) Err() error {
	if !v.broken.Load() {
		return nil // the dispatcher asks per message: no lock while healthy
	}
	v.mu.RLock()
	defer v.mu.RUnlock()
	if v.brokenAt.IsZero() || time.Since(v.brokenAt) < StaleAfter {
		return nil
	}
	return fmt.Errorf("settings watch broken since %s: %w", v.brokenAt.Format(time.RFC3339), v.brokeErr)
}

// Destination returns where an event of the account and project goes: the
// project's URL and headers, else the account's, else false.
func (v *View) Destination(accountID, projectID string) (plugins.Destination, bool) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	if p := v.cur.projects[projectID]; p.set {
		return p.dest, true
	}
	if a := v.cur.accounts[accountID]; a.set {
		return a.dest, true
	}
	return plugins.Destination{}, false
}

// SSOWebhook returns the webhook of the account's SSO client, or nil when the
// account has no SSO client or the client has no webhook URL.
func (v *View) SSOWebhook(accountID string) *plugins.Destination {
	v.mu.RLock()
	defer v.mu.RUnlock()
	a, ok := v.cur.accounts[accountID]
	if !ok || a.ssoClientID == "" {
		return nil
	}
	c := v.cur.sso[a.ssoClientID]
	if !c.set {
		return nil
	}
	d := c.dest
	return &d
}

// Run watches kv until ctx is done, re-establishing the watch when it
// breaks. It returns nil when ctx is done.
//
// A watch can also stall without an error: its consumer deleted from
// outside, the bucket deleted, NATS unreachable (nats.go's ordered consumer
// notices a lost consumer only after missed heartbeats, and a change made
// meanwhile is not seen for ten seconds or more). So, while the view is
// live, it compares every CheckEvery the bucket's last revision with its
// own: a revision it has not applied one check later, or a bucket it
// cannot read at two checks in a row, breaks the watch, which is made again (SPEC §3: the last
// view is kept, and consuming pauses after StaleAfter).
func (v *View) Run(ctx context.Context, kv jetstream.KeyValue) error {
	var (
		mu   sync.Mutex
		stop context.CancelCauseFunc = func(error) {}
	)
	checked := make(chan struct{})
	go func() {
		defer close(checked)
		v.check(ctx, kv, func(err error) {
			v.broke(err)
			mu.Lock()
			stop(err)
			mu.Unlock()
		})
	}()
	defer func() { <-checked }()

	backoff := 100 * time.Millisecond
	for {
		wctx, cancel := context.WithCancelCause(ctx)
		mu.Lock()
		stop = cancel
		mu.Unlock()
		err := v.watchOnce(wctx, kv)
		if cause := context.Cause(wctx); cause != nil && ctx.Err() == nil {
			err = cause
		}
		cancel(nil)
		if ctx.Err() != nil {
			return nil
		}
		if v.live.Swap(false) {
			backoff = 100 * time.Millisecond // it had worked: try again soon
		}
		// Warned once a spell; retries (every second at most) are debug.
		level := slog.LevelDebug
		if v.broke(err) {
			level = slog.LevelWarn
		}
		v.log.Log(ctx, level, "settings watch broken; keeping the last view", "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		// At most a second: once NATS is back, the view (and the
		// dispatcher, paused on a stale view) should not wait long.
		backoff = min(backoff*2, time.Second)
	}
}

// broke records that the watch is broken: since when (the first break of
// a spell) and why (the latest reason). It reports whether this is the
// first break of a spell.
func (v *View) broke(err error) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	first := v.brokenAt.IsZero()
	if first {
		v.brokenAt = time.Now()
		v.broken.Store(true)
	}
	v.brokeErr = err
	return first
}

// check calls stall when the live view falls behind the bucket (see Run),
// until ctx is done.
func (v *View) check(ctx context.Context, kv jetstream.KeyValue, stall func(error)) {
	t := time.NewTicker(v.checkEvery)
	defer t.Stop()
	var (
		want   uint64 // the bucket's last revision at the previous check
		failed int    // checks in a row that could not read the bucket
	)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !v.live.Load() {
			want, failed = 0, 0 // (re)loading, or broken and being made again
			continue
		}
		last, values, err := lastRevision(ctx, kv, v.checkEvery)
		if err != nil {
			failed++
		} else {
			failed = 0
		}
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			// Once is a blip (a clustered bucket electing a leader);
			// twice in a row, the watch cannot be trusted either.
			want = 0
			if failed >= 2 {
				stall(fmt.Errorf("settings bucket unreadable: %w", err))
			}
		case want != 0 && v.rev.Load() < want:
			stall(fmt.Errorf("settings watch stalled: the bucket is at revision %d, the view at %d since more than %s", want, v.rev.Load(), v.checkEvery))
			want = 0
		case values == 0 && v.size() > 0:
			// Its stream purged from outside: the watch is told nothing.
			// Made again, it finds the bucket empty (see reloadable).
			stall(errors.New("settings bucket emptied from outside (its stream purged)"))
			want = 0
		default:
			want = last
		}
	}
}

// lastRevision is the revision of the bucket's newest entry, and how many
// entries it holds.
func lastRevision(ctx context.Context, kv jetstream.KeyValue, timeout time.Duration) (last, values uint64, err error) {
	ctx, cancel := context.WithTimeout(ctx, max(timeout, time.Second))
	defer cancel()
	st, err := kv.Status(ctx)
	if err != nil {
		return 0, 0, err
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return 0, 1, nil // cannot tell: never a stall
	}
	return bs.StreamInfo().State.LastSeq, bs.Values(), nil
}

// size is how many settings the view holds.
func (v *View) size() int {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.cur.size()
}

// watchOnce runs one watch: it builds a fresh snapshot from the initial
// values (so keys deleted while the watch was down disappear), swaps it in
// at the end-of-initial-values marker, then applies live updates.
func (v *View) watchOnce(ctx context.Context, kv jetstream.KeyValue) error {
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch settings: %w", err)
	}
	defer func() { _ = w.Stop() }()

	pending := newSnapshot()
	var (
		pendingRev uint64
		newest     time.Time // when the newest initial value was written
	)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return fmt.Errorf("watch settings: updates closed")
			}
			if e == nil { // end of initial values
				if pending != nil {
					if err := v.reloadable(pending, newest); err != nil {
						return err
					}
					v.mu.Lock()
					v.cur = pending
					v.brokenAt, v.brokeErr = time.Time{}, nil
					v.broken.Store(false)
					v.mu.Unlock()
					v.advance(pendingRev)
					v.live.Store(true)
					pending = nil
					v.readyOnce.Do(func() { close(v.ready) })
					v.log.Debug("settings view loaded")
				}
				continue
			}
			if pending != nil {
				v.apply(ctx, kv, pending, e, false)
				pendingRev = max(pendingRev, e.Revision())
				if e.Created().After(newest) {
					newest = e.Created()
				}
				continue
			}
			v.mu.Lock()
			v.apply(ctx, kv, v.cur, e, true)
			v.mu.Unlock()
			v.advance(e.Revision())
		}
	}
}

// reloadable reports whether the initial values s of a watch made again
// after a break may replace the view. Not when the bucket came back empty
// where the view had settings — deleted and made again, or purged — for
// every waiting event would then be acked as no_destination; the view is
// kept, consuming stays paused, and each re-watch looks again. Once the
// bucket holds settings again, they are taken after StaleAfter without a
// write, so that settings being written back are not used half-way.
func (v *View) reloadable(s *snapshot, newest time.Time) error {
	select {
	case <-v.ready:
	default:
		return nil // the first load: whatever the bucket holds
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	switch {
	case s.size() == 0 && v.cur.size() > 0:
		if !v.emptied {
			v.emptied = true
			v.log.Warn("settings bucket came back empty; keeping the last view and consuming paused until settings are written back (or callbackd is restarted)",
				"settings", v.cur.size())
		}
		return fmt.Errorf("settings bucket came back empty where the view had %d settings: write them back, or restart callbackd to start from an empty bucket", v.cur.size())
	case v.emptied && time.Since(newest) < StaleAfter:
		return fmt.Errorf("settings bucket being written back after it came back empty: waiting for %s without a write", StaleAfter)
	}
	if v.emptied {
		v.emptied = false
		v.log.Info("settings written back; using them", "settings", s.size())
	}
	return nil
}

// advance raises the applied revision to rev (a re-watch after a break
// replays older entries; the revision never goes back).
func (v *View) advance(rev uint64) {
	for {
		cur := v.rev.Load()
		if rev <= cur || v.rev.CompareAndSwap(cur, rev) {
			return
		}
	}
}

// apply puts one KV entry into s. An invalid value is ignored with a warning:
// the last valid value stays. Live, that is the one in s; while a watch
// loads its initial values (s is a new snapshot) it is the newest valid one
// in the key's history, else the live view's.
func (v *View) apply(ctx context.Context, kv jetstream.KeyValue, s *snapshot, e jetstream.KeyValueEntry, live bool) {
	key := e.Key()
	kind, id, _ := strings.Cut(key, ".")
	var old *snapshot
	if !live {
		// Not held across applyEntry, which may read the key's history
		// from the bucket: readers (every event's Destination) must
		// never wait on a network call. Only this goroutine changes the
		// view, so old stays as it is meanwhile.
		v.mu.RLock()
		old = v.cur
		v.mu.RUnlock()
	}
	switch kind + "." {
	case projectPrefix, accountPrefix, ssoClientPrefix:
		if err := subjects.ValidateID(id); err != nil {
			v.log.Warn("settings: ignoring key with an invalid id (a decimal integer without leading zeros, 1 to 19 digits)", "key", key)
			return
		}
	}
	switch kind + "." {
	case projectPrefix:
		applyEntry(ctx, v, kv, e, id, s.projects, old.projectsOrNil(), ParseProject,
			func(p Project) target {
				v.warnRefused(key, "apiCallbackUrl", p.APICallbackURL)
				return makeTarget(p.APICallbackURL, p.APICallbackHeaders)
			})
	case accountPrefix:
		applyEntry(ctx, v, kv, e, id, s.accounts, old.accountsOrNil(), ParseAccount, func(a Account) accountEntry {
			v.warnRefused(key, "apiCallbackUrl", a.APICallbackURL)
			ae := accountEntry{target: makeTarget(a.APICallbackURL, a.APICallbackHeaders)}
			if a.SSOClientID != nil {
				ae.ssoClientID = *a.SSOClientID
			}
			return ae
		})
	case ssoClientPrefix:
		applyEntry(ctx, v, kv, e, id, s.sso, old.ssoOrNil(), ParseSSOClient,
			func(c SSOClient) target {
				v.warnRefused(key, "webhookUrl", c.WebhookURL)
				return makeTarget(c.WebhookURL, c.WebhookHeaders)
			})
	default:
		v.log.Warn("settings: ignoring unknown key", "key", key)
	}
}

// applyEntry is apply for one kind of setting: m is the snapshot's map,
// old the live view's while initial values load (nil when live).
func applyEntry[T, E any](ctx context.Context, v *View, kv jetstream.KeyValue, e jetstream.KeyValueEntry, id string,
	m, old map[string]E, parse func([]byte) (T, error), entry func(T) E) {
	// A change while running is logged (the key and its revision, never
	// a value): the trail of who changed what, through the API or the
	// bucket. The initial load is not.
	if e.Operation() != jetstream.KeyValuePut {
		delete(m, id)
		if old == nil {
			v.log.Info("settings: removed", "key", e.Key(), "revision", e.Revision())
		}
		return
	}
	val, err := parse(e.Value())
	if err == nil {
		m[id] = entry(val)
		if old == nil {
			v.log.Info("settings: changed", "key", e.Key(), "revision", e.Revision())
		}
		return
	}
	v.warnInvalid(e.Key(), e.Revision(), err)
	if old == nil {
		return // live: what m holds stays
	}
	if kv != nil {
		hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		val, herr := lastValid(hctx, kv, e.Key(), parse)
		cancel()
		if herr == nil {
			m[id] = entry(val) // the zero value, none, when no valid one is kept
			return
		}
	}
	if prev, ok := old[id]; ok {
		m[id] = prev
	}
}

func (s *snapshot) projectsOrNil() map[string]target {
	if s == nil {
		return nil
	}
	return s.projects
}

func (s *snapshot) accountsOrNil() map[string]accountEntry {
	if s == nil {
		return nil
	}
	return s.accounts
}

func (s *snapshot) ssoOrNil() map[string]target {
	if s == nil {
		return nil
	}
	return s.sso
}

func (v *View) warnInvalid(key string, rev uint64, err error) {
	// err names the field, never a header value.
	v.log.Warn("settings: ignoring invalid value; the key keeps its last valid value, or none if it never had one", "key", key, "revision", rev, "err", err)
}

// warnRefused warns about a stored URL that the outbound policy refuses:
// it is in effect, and its deliveries will be refused.
func (v *View) warnRefused(key, field string, u *string) {
	if err := RefusedHost(v.guard, u); err != nil {
		v.log.Warn("settings: the stored URL's host is refused by the outbound policy; its deliveries will fail as destination_not_allowed (dead-lettered and reported)",
			"key", key, "field", field, "err", err)
	}
}

// makeTarget keeps the headers of a value without a URL too, so that the
// value can be given back (project, account, ssoClient).
func makeTarget(u *string, hs []Header) target {
	if u == nil {
		return target{dest: plugins.Destination{Headers: toPlugin(hs)}}
	}
	return target{dest: plugins.Destination{URL: *u, Headers: toPlugin(hs)}, set: true}
}

// project, account and ssoClient give the Store the value in effect for one
// key, once the view has applied the bucket up to a revision (see held).
// A nil View holds nothing.
func (v *View) project(id string) held[Project] {
	return func(rev uint64) (Project, bool) {
		t, ok := v.held(rev, func(s *snapshot) target { return s.projects[id] })
		return Project{APICallbackURL: t.url(), APICallbackHeaders: fromPlugin(t.dest.Headers)}, ok
	}
}

func (v *View) account(id string) held[Account] {
	return func(rev uint64) (Account, bool) {
		var a accountEntry
		_, ok := v.held(rev, func(s *snapshot) target { a = s.accounts[id]; return a.target })
		out := Account{APICallbackURL: a.url(), APICallbackHeaders: fromPlugin(a.dest.Headers)}
		if a.ssoClientID != "" {
			sid := a.ssoClientID
			out.SSOClientID = &sid
		}
		return out, ok
	}
}

func (v *View) ssoClient(id string) held[SSOClient] {
	return func(rev uint64) (SSOClient, bool) {
		t, ok := v.held(rev, func(s *snapshot) target { return s.sso[id] })
		return SSOClient{WebhookURL: t.url(), WebhookHeaders: fromPlugin(t.dest.Headers)}, ok
	}
}

func (v *View) held(rev uint64, get func(*snapshot) target) (target, bool) {
	if v == nil {
		return target{}, false
	}
	v.mu.RLock()
	defer v.mu.RUnlock()
	if v.rev.Load() < rev {
		return target{}, false
	}
	return get(v.cur), true
}

func (t target) url() *string {
	if !t.set {
		return nil
	}
	u := t.dest.URL
	return &u
}
