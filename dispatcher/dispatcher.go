// Package dispatcher consumes events from JetStream and delivers them:
// parse the subject, encode with the event type's encoder, resolve the
// destination from the settings view, deliver through the transport, record
// the outcome, and only then ack. It talks to plugins only through the
// interfaces of package plugins, so whether they run in-process or in a
// plugin process is invisible here.
package dispatcher

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/deliverylog"
	"github.com/callbackd/callbackd/internal/gopool"
	"github.com/callbackd/callbackd/plugins"
)

// Resolver is what the dispatcher needs of the settings view.
type Resolver interface {
	// Ready is closed once the initial settings are loaded.
	Ready() <-chan struct{}
	// Err is non-nil while the view is stale; consuming pauses then.
	Err() error
	Destination(accountID, projectID string) (plugins.Destination, bool)
	// SSOWebhook is the webhook of the account's SSO client, nil when none.
	SSOWebhook(accountID string) *plugins.Destination
}

// Options configure a Dispatcher. Zero values get the defaults of SPEC §6
// where one exists.
type Options struct {
	// Workers is how many events are processed at once and how far ahead
	// messages are pulled (0 → 64).
	Workers int
	// MaxPayload is the largest event payload accepted, in bytes (0 → 256 KiB).
	MaxPayload int64
	// MaxDeliveries is how many deliveries of an event infrastructure
	// errors may use up before it is dead-lettered (0 → 50).
	MaxDeliveries int
	// DeliveryTimeout is the per-attempt timeout (0 → 30 s), which the
	// transport applies; the consumers' ack wait is based on it.
	DeliveryTimeout time.Duration
	// CallTimeout is the deadline of other plugin calls (0 → 5 s).
	CallTimeout time.Duration
	// Encoders maps event types to their encoders.
	Encoders map[string]plugins.Encoder
	// Transport delivers notifications. Required.
	Transport plugins.Transport
	// Failure is told about deliveries that failed for good; nil for none.
	Failure plugins.FailureHandler
	// MaxAttempts is how many attempts a delivery gets (0 → 4; 1 reproduces
	// the seed literally: a failed callback is reported at once).
	MaxAttempts int
	// Backoff is the wait before each retry; the last entry repeats
	// (empty → 10s, 1m, 5m).
	Backoff []time.Duration
	// PerHostConcurrency caps attempts in flight per destination host:port (0 → 8).
	PerHostConcurrency int
	// HostWindow is how many attempts per host are handed to the transport
	// at once while the host answers quickly, when the transport caps its
	// own requests per host at PerHostConcurrency (the built-in http-form
	// does): the attempts over the cap wait in the transport, and the next
	// request starts as soon as one ends, without a round trip through the
	// dispatcher. A slow host gets PerHostConcurrency. 0, or less than
	// PerHostConcurrency: PerHostConcurrency (the transport caps nothing).
	HostWindow int
	// MaxInFlight caps attempts in flight in all (0 → 1024).
	MaxInFlight int
	// Logger receives the dispatcher's logs; nil discards them.
	Logger *slog.Logger
	// Observer is told about outcomes and attempts, for metrics; nil for none.
	Observer Observer
	// Recorder receives the delivery log; nil for none. It must not block.
	Recorder Recorder
	// StreamCheck is how often the dispatcher checks that callbackd's
	// streams are there, to make a deleted one again, and whether the
	// retries waiting are at dispatcher.max_retry_pending (0 → 5 s).
	StreamCheck time.Duration
}

// Recorder writes delivery-log records without blocking (deliverylog.Writer).
type Recorder interface {
	Write(r deliverylog.Record)
}

func (o *Options) setDefaults() {
	if o.Workers <= 0 {
		o.Workers = 64
	}
	if o.MaxPayload <= 0 {
		o.MaxPayload = 256 << 10
	}
	if o.MaxDeliveries <= 0 {
		o.MaxDeliveries = 50
	}
	if o.DeliveryTimeout <= 0 {
		o.DeliveryTimeout = 30 * time.Second
	}
	if o.CallTimeout <= 0 {
		o.CallTimeout = 5 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Observer == nil {
		o.Observer = nopObserver{}
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 4
	}
	if len(o.Backoff) == 0 {
		o.Backoff = []time.Duration{10 * time.Second, time.Minute, 5 * time.Minute}
	}
	if o.PerHostConcurrency <= 0 {
		o.PerHostConcurrency = 8
	}
	if o.HostWindow < o.PerHostConcurrency {
		o.HostWindow = o.PerHostConcurrency
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 1024
	}
	if o.StreamCheck <= 0 {
		o.StreamCheck = 5 * time.Second
	}
}

// Dispatcher delivers the events of the CALLBACKS stream and the retries
// of CALLBACKS_RETRY.
type Dispatcher struct {
	js  jetstream.JetStream
	top Topology
	// eventsCreated is CALLBACKS's creation time, unix seconds (part of
	// the delivery ids of events without Nats-Msg-Id); it changes when a
	// deleted stream is made again (restoreIfGone).
	eventsCreated atomic.Int64
	// restoreMu makes the fetch loops that find their consumer gone
	// recreate it one at a time.
	restoreMu sync.Mutex
	view      Resolver
	o         Options
	log       *slog.Logger

	// workers bounds CPU work (decode, encode, route) across both consumers;
	// an attempt in flight gives its worker slot back.
	workers  chan struct{}
	inFlight chan struct{}
	// slowInFlight is the share of inFlight that attempts to slow hosts
	// may hold: half.
	slowInFlight chan struct{}
	hosts        *hostLimiter
	urls         urlCache
	ackWait      time.Duration
	// keepDuring is set when ackWait is shorter than an attempt may take:
	// each attempt then tells the server, every half ack wait, that its
	// message is still being worked on.
	keepDuring bool
	// hostWait bounds how long an attempt queues for its host's slot
	// before it is parked: well within the ack wait.
	hostWait time.Duration
	// fastQueue is how many attempts may queue for a fast host's slots:
	// the dispatcher consumer's pending limit, so fresh work for a fast
	// host never parks (parked work would come back behind it).
	fastQueue int

	// pipelines encode and deliver an event in one call per event type;
	// an event type without one (an encoder in a plugin process other than
	// the transport's) is encoded at the start of attempt, before it takes
	// a slot of its host.
	pipelines map[string]plugins.EncodeDeliverer

	idFieldsMu sync.Mutex
	idFields   map[string][]string

	wg sync.WaitGroup // handlers and attempts in flight
	// paused counts the pull loops waiting for a fresh settings view.
	paused atomic.Int32
	// stopping is closed when Run is told to stop (its ctx.Done()):
	// attempts still queued for a host's slot then hand their message back
	// instead of waiting.
	stopping <-chan struct{}
	// pool runs the handlers on goroutines that keep their grown stacks.
	pool *gopool.Pool
	// handBackLog bounds the lines of events handed back after an
	// infrastructure error: a restarting plugin hands back all it had.
	handBackLog *logLimit
	// deadLetterLog bounds the lines of dead letters that could not be
	// written (their events are handed back).
	deadLetterLog *logLimit
	// failureLog and badNoticeLog bound the lines of a failure plugin
	// that keeps failing or returns notifications that cannot be sent.
	failureLog, badNoticeLog *logLimit
	// parkLog bounds the lines of events parked many times (parkWarnAt).
	parkLog *logLimit
	// skipLog and noDestLog bound the lines of events that end by rule.
	skipLog, noDestLog *logLimit
	// unpaid counts deliveries refused by a restarting plugin, which
	// max_deliveries does not count.
	unpaid unpaid
	// givingUp keeps why an event was given up on while its dead letter
	// could not be written (giveUp).
	givingUp reasons
	// settlements keeps the ends of attempts whose retry or dead letter
	// could not be published, for the message's next delivery.
	settlements settlements
	// storageFull is the last write JetStream refused for lack of
	// storage (StorageErr).
	storageFull atomic.Pointer[storageRefusal]
}

// poolIdle is how long a handler goroutine waits for the next message
// before it exits.
const poolIdle = 10 * time.Second

// New returns a Dispatcher over the topology EnsureStreams made.
func New(js jetstream.JetStream, top Topology, view Resolver, o Options) (*Dispatcher, error) {
	o.setDefaults()
	if o.Transport == nil {
		return nil, errors.New("dispatcher: a transport is required")
	}
	if top.Dispatcher == nil || top.Retrier == nil {
		return nil, errors.New("dispatcher: no consumers (call EnsureStreams first)")
	}
	// The consumers' own ack wait, which an existing install may have
	// kept from another delivery.timeout (streams left as they are).
	ackWait := o.DeliveryTimeout + 10*time.Second
	for _, c := range []jetstream.Consumer{top.Dispatcher, top.Retrier} {
		if w := c.CachedInfo().Config.AckWait; w > 0 {
			ackWait = min(ackWait, w)
		}
	}
	// Shorter than an attempt may take: the message is kept alive while
	// the attempt is in flight, or the server would hand it out again
	// and the endpoint get the event twice at once.
	keepDuring := ackWait < o.DeliveryTimeout+attemptSlack
	if keepDuring {
		o.Logger.Warn("the consumers' ack wait is shorter than an attempt may take; messages are kept alive during attempts (serve --update-streams sets the ack wait to delivery.timeout + 10s)",
			"ack_wait", ackWait, "delivery_timeout", o.DeliveryTimeout)
	}
	pipelines := make(map[string]plugins.EncodeDeliverer, len(o.Encoders))
	for typ, enc := range o.Encoders {
		if pe, ok := enc.(plugins.PipelineEncoder); ok {
			// An encoder in a plugin process: one crossing with that
			// process's own transport; with another transport, its
			// answer is waited for before a host slot is taken, so a slow
			// or hung encoder holds no slot of a customer's host that the
			// other event types need.
			if p := pe.PipelineWith(o.Transport); p != nil {
				pipelines[typ] = p
			}
			continue
		}
		// In-process: CPU work, done in the attempt.
		pipelines[typ] = plugins.Pipeline(enc, o.Transport)
	}
	d := &Dispatcher{
		js: js, top: top, view: view, o: o, log: o.Logger, pipelines: pipelines,
		handBackLog:   newLogLimit(time.Second, 10),
		deadLetterLog: newLogLimit(time.Second, 10),
		failureLog:    newLogLimit(time.Second, 10),
		badNoticeLog:  newLogLimit(time.Second, 10),
		parkLog:       newLogLimit(time.Second, 10),
		skipLog:       newLogLimit(time.Second, 10),
		noDestLog:     newLogLimit(time.Second, 10),
		workers:       make(chan struct{}, o.Workers),
		inFlight:      make(chan struct{}, o.MaxInFlight),
		slowInFlight:  make(chan struct{}, max(o.MaxInFlight/2, 1)),
		hosts:         newHostLimiter(o.PerHostConcurrency, o.HostWindow),
		ackWait:       ackWait,
		keepDuring:    keepDuring,
		hostWait:      ackWait / 4,
		fastQueue:     max(top.Dispatcher.CachedInfo().Config.MaxAckPending, o.PerHostConcurrency),
		idFields:      map[string][]string{},
		stopping:      make(chan struct{}), // until Run
	}
	d.eventsCreated.Store(top.EventsCreated.Unix())
	return d, nil
}

// isStopping reports whether Run has been told to stop.
func (d *Dispatcher) isStopping() bool {
	select {
	case <-d.stopping:
		return true
	default:
		return false
	}
}

// Run consumes until ctx is done, then stops fetching, finishes the work in
// hand (bounded by the delivery timeout) and returns. It consumes nothing
// until the settings view has loaded. What goes wrong while consuming (NATS
// away, a consumer deleted) is logged and tried again, so it returns nil.
func (d *Dispatcher) Run(ctx context.Context) error {
	select {
	case <-d.view.Ready():
	case <-ctx.Done():
		return nil
	}
	poolDone := make(chan struct{})
	d.pool = gopool.New(poolIdle, poolDone)
	defer close(poolDone)
	defer d.wg.Wait()
	// Closed the moment Run is told to stop. (Each Run has its own:
	// handlers of an earlier Run have all returned.)
	d.stopping = ctx.Done()
	d.reportHeld(ctx)
	var consumers sync.WaitGroup
	consumers.Go(func() { d.consume(ctx, d.top.Dispatcher, "dispatcher") })
	consumers.Go(func() { d.consume(ctx, d.top.Retrier, "retrier") })
	d.wg.Go(func() { d.keepStreams(ctx) })
	consumers.Wait()
	return nil
}

// reportHeld logs, at start, the messages each consumer has handed out and
// not seen acked. After a crash or kill -9 they are the dead run's: they
// come back once their ack wait passes, and until then they count against
// the consumer's pending limit, so a restarted instance may get nothing new
// for that long. Said at start, that wait does not look like a hang.
func (d *Dispatcher) reportHeld(ctx context.Context) {
	for _, c := range []struct {
		name string
		c    jetstream.Consumer
	}{{"dispatcher", d.top.Dispatcher}, {"retrier", d.top.Retrier}} {
		ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
		info, err := c.c.Info(ictx)
		cancel()
		if err != nil || info.NumAckPending == 0 {
			continue
		}
		msg := "messages handed out before this start are not acked yet; those handed back at a clean stop come back within a second, those of a run that died once their ack wait passes"
		if c.name == "retrier" {
			// Retries waiting for their time are pending too (delayed
			// NAKs), after a clean stop as well.
			msg = "retries handed out before this start are pending: those waiting for their time come back when due, those of a run that died once their ack wait passes"
		}
		attrs := []any{"consumer", c.name, "pending", info.NumAckPending, "ack_wait", info.Config.AckWait, "max_ack_pending", info.Config.MaxAckPending}
		d.log.Info(msg, attrs...)
		if info.Config.MaxAckPending > 0 && info.NumAckPending >= info.Config.MaxAckPending {
			// At the limit: a stall only if nothing is handed out in the
			// next heldCheck (what a clean stop handed back comes back
			// within a second, and keeps the consumer busy, not stuck).
			d.wg.Go(func() { d.checkHeld(ctx, c.c, info.Delivered.Consumer, attrs) })
		}
	}
}

// heldCheck is how long after start reportHeld looks again at a consumer
// that was at its pending limit.
const heldCheck = 3 * time.Second

// checkHeld warns when a consumer that was at its pending limit at start
// has handed out nothing since (its consumer sequence was delivered then).
func (d *Dispatcher) checkHeld(ctx context.Context, c jetstream.Consumer, delivered uint64, attrs []any) {
	select {
	case <-ctx.Done():
		return
	case <-time.After(heldCheck):
	}
	ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
	info, err := c.Info(ictx)
	cancel()
	if err != nil || info.Delivered.Consumer > delivered {
		return
	}
	d.log.Warn("the consumer is at its pending limit with the unacked messages of a run that died, and hands out nothing new until their ack wait passes", attrs...)
}

// fetchWait bounds one pull request; fetchLoops pull requests per consumer
// are outstanding at a time, so one is waiting at the server while the
// other's messages are handed out. Under load a request ends with its
// batch long before; idle, the loops ask again each second. At shutdown a
// loop waits for its open request to end (puller.close), so this is also
// what a stop can take beyond the attempts in flight.
const (
	fetchWait  = time.Second
	fetchLoops = 2
)

// consume runs one consumer: fetchLoops loops of one-shot pull requests
// (puller, like jetstream's Fetch) that between them ask for at most
// Workers messages (SPEC §3: messages are pulled at most
// dispatcher.workers ahead), every message handled by a worker (slots
// shared by both consumers). One-shot pulls keep no client-side pull
// accounting that could fall out of step with the server's, so a pull
// lost to a reconnect costs at most fetchWait + 1 s.
func (d *Dispatcher) consume(ctx context.Context, c jetstream.Consumer, name string) {
	loops, batch := pullShares(d.o.Workers)
	d.log.Info("consuming", "consumer", name, "workers", d.o.Workers, "pull_batch", batch, "pull_loops", loops)
	var wg sync.WaitGroup
	for range loops {
		wg.Go(func() { d.fetchLoop(ctx, c, name, batch) })
	}
	wg.Wait()
}

// pullShares splits workers between the fetch loops: loops requests of
// batch messages each, loops × batch ≤ workers.
func pullShares(workers int) (loops, batch int) {
	loops = max(1, min(fetchLoops, workers))
	return loops, max(1, workers/loops)
}

// fetchLoop pulls batch messages at a time from c and starts a handler for
// each as a worker slot frees, until ctx is done; then it hands back what
// it pulled and did not start.
func (d *Dispatcher) fetchLoop(ctx context.Context, c jetstream.Consumer, name string, batch int) {
	// Work in hand is finished even after ctx is done: acking nothing that
	// was not finished, and handing nothing back that was.
	work := context.WithoutCancel(ctx)
	backoff := 100 * time.Millisecond
	pause := func(limit time.Duration) {
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, limit)
	}
	var p *puller
	for ctx.Err() == nil {
		var err error
		if p, err = newPuller(d.js, c, batch, fetchWait); err == nil {
			break
		}
		d.log.Warn("pull subscription failed", "consumer", name, "err", err)
		pause(5 * time.Second)
	}
	if p == nil {
		return
	}
	defer p.close(func(m jetstream.Msg) { d.nak(m, handBackDelay) })
	handle := func(m jetstream.Msg) {
		if ctx.Err() != nil || d.view.Err() != nil {
			// Pulled but not started before shutdown, or pulled by a
			// request made while the settings view was fresh and
			// delivered after it went stale: hand it back (the loop
			// then pauses in waitFresh).
			d.nak(m, handBackDelay)
			return
		}
		select {
		case d.workers <- struct{}{}:
		case <-ctx.Done():
			// Stopped while waiting for a worker: not started.
			d.nak(m, handBackDelay)
			return
		}
		d.wg.Add(1)
		d.pool.Go(func() {
			defer d.wg.Done()
			// Released once the CPU work is done (see handle), or
			// when the handler returns; all on this goroutine.
			slot := workerSlot{workers: d.workers}
			defer slot.release()
			d.handle(work, m, slot.release)
		})
	}
	// Refusals are mostly a NATS leader moving (409 Server Shutdown, 503
	// while a new one is elected), over in a second or so. Whether the
	// consumer is gone is asked only when they have lasted restoreAfter:
	// the question goes unanswered during an election, and asking at the
	// first refusal held every loop for its timeout.
	var refusedSince, lastWarn time.Time
	for ctx.Err() == nil {
		d.waitFresh(ctx)
		if err := p.pull(ctx, handle); err != nil && ctx.Err() == nil {
			// One line when trouble starts and one every 10 s while it
			// lasts, not one per try.
			level := slog.LevelDebug
			if time.Since(lastWarn) >= 10*time.Second {
				level, lastWarn = slog.LevelWarn, time.Now()
			}
			d.log.Log(ctx, level, "pull failed", "consumer", name, "err", err)
			limit := 5 * time.Second // NATS unreachable: no hurry
			if errors.Is(err, errPullStatus) {
				// The server answers: a new leader is usually there
				// within a second or two, so ask again soon.
				limit = time.Second
				if refusedSince.IsZero() {
					refusedSince = time.Now()
				}
				if time.Since(refusedSince) >= restoreAfter {
					refusedSince = time.Now() // and again restoreAfter later
					if d.restoreIfGone(ctx, c, name) {
						refusedSince = time.Time{}
						backoff = 100 * time.Millisecond // made again: pull at once
						continue
					}
				}
			}
			pause(limit)
			continue
		}
		if !lastWarn.IsZero() {
			d.log.Info("pulling again", "consumer", name)
			lastWarn = time.Time{}
		}
		refusedSince = time.Time{}
		backoff = 100 * time.Millisecond
	}
}

// workerSlot is a handler's slot of Dispatcher.workers, taken by the fetch
// loop before the handler starts. It is not safe for concurrent use: the
// handler's goroutine alone releases it.
type workerSlot struct {
	workers  chan struct{}
	released bool
}

// release gives the slot back; calls after the first do nothing.
func (w *workerSlot) release() {
	if !w.released {
		w.released = true
		<-w.workers
	}
}

// waitFresh blocks while the settings view is stale (SPEC §3 "Settings
// first"), or until ctx is done.
func (d *Dispatcher) waitFresh(ctx context.Context) {
	if ctx.Err() != nil || d.view.Err() == nil {
		return
	}
	// Every pull loop pauses; the first to pause and the last to resume
	// say so.
	if d.paused.Add(1) == 1 {
		d.log.Warn("dispatcher paused: settings view is stale", "err", d.view.Err())
	}
	defer func() {
		if d.paused.Add(-1) == 0 {
			d.log.Info("dispatcher resumed: settings view is fresh again")
		}
	}()
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for d.view.Err() != nil {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
