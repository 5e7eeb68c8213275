package plugins

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	"github.com/callbackd/callbackd/internal/gopool"
)

// This file multiplexes per-event calls onto one long-lived bidirectional
// stream per plugin process (SPEC §5). Measured on a 2-core machine, a
// unary gRPC call costs ~75 µs of CPU, so two per event cut throughput to
// 0.3–0.6 of in-process; batching items on one stream amortises that cost.
//
// Both directions batch the same way: a single sender goroutine waits for
// work, yields once (runtime.Gosched) so that callers running at the same
// time can add theirs, then sends everything queued, up to maxBatch items a
// message. There are no timers: an idle stream sends a lone item at once.

// maxBatch caps the items of one stream message.
const maxBatch = 64

// maxBatchBytes caps the size of one host-to-plugin message of several
// items: gRPC servers refuse messages over 4 MiB by default (plugins.Serve
// accepts up to MaxMessageBytes), and a message they refuse breaks the
// stream with every item on it. An item larger than this goes alone.
const maxBatchBytes = 1 << 20

// MaxMessageBytes is the largest message a plugin served by Serve accepts
// from its host: one item, an event of the largest dispatcher.max_payload
// or a notification of MaxNotificationBytes, fits with room to spare.
const MaxMessageBytes = 64 << 20

// sized is an outgoing item that knows its size on the wire.
type sized interface{ wireSize() int }

// wireSizeOf is the size on the wire of an item that knows it, else 0.
func wireSizeOf[Out any](item *Out) int {
	if s, ok := any(item).(sized); ok {
		return s.wireSize()
	}
	return 0
}

// batchStream is one bidirectional stream of batches, seen from one side:
// send writes items (and the ids of items to cancel, host side only),
// recv reads the next batch from the peer.
type batchStream[Out, In any] interface {
	send(items []*Out, cancel []uint64) error
	recv() ([]*In, []uint64, error)
}

// batcher queues outgoing items for one sender goroutine.
type batcher[Out any] struct {
	mu      sync.Mutex
	queue   []*Out
	cancel  []uint64
	spare   []*Out
	wake    chan struct{}
	stopped bool
}

func newBatcher[Out any]() *batcher[Out] {
	return &batcher[Out]{wake: make(chan struct{}, 1)}
}

// push queues an item (or a cancellation, when item is nil) and wakes the
// sender. It reports false once the batcher has stopped.
func (b *batcher[Out]) push(item *Out, cancel uint64) bool {
	b.mu.Lock()
	if b.stopped {
		b.mu.Unlock()
		return false
	}
	if item != nil {
		b.queue = append(b.queue, item)
	} else {
		b.cancel = append(b.cancel, cancel)
	}
	b.mu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default:
	}
	return true
}

// take returns up to maxBatch queued items, no more than maxBatchBytes of
// them unless the first alone is larger, and every queued cancellation; ok
// is false when there is nothing queued.
func (b *batcher[Out]) take() (items []*Out, cancel []uint64, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.queue) == 0 && len(b.cancel) == 0 {
		return nil, nil, false
	}
	n, size := min(len(b.queue), maxBatch), 0
	for i, it := range b.queue[:n] {
		if size += wireSizeOf(it); size > maxBatchBytes && i > 0 {
			n = i
			break
		}
	}
	if n == len(b.queue) {
		items, b.queue, b.spare = b.queue, b.spare, nil
	} else {
		items = make([]*Out, n)
		copy(items, b.queue)
		rest := copy(b.queue, b.queue[n:])
		clear(b.queue[rest:])
		b.queue = b.queue[:rest]
	}
	cancel, b.cancel = b.cancel, nil
	return items, cancel, true
}

// recycle hands a sent batch's slice back for reuse.
func (b *batcher[Out]) recycle(items []*Out) {
	if cap(items) > 4*maxBatch {
		return
	}
	clear(items)
	b.mu.Lock()
	if b.spare == nil {
		b.spare = items[:0]
	}
	b.mu.Unlock()
}

func (b *batcher[Out]) stop() {
	b.mu.Lock()
	b.stopped = true
	b.queue, b.cancel, b.spare = nil, nil, nil
	b.mu.Unlock()
}

// run sends batches until done is closed or send fails.
func (b *batcher[Out]) run(done <-chan struct{}, send func([]*Out, []uint64) error) error {
	for {
		select {
		case <-b.wake:
		case <-done:
			return nil
		}
		// Let callers that are running right now queue their items too,
		// so that they leave in this batch rather than one message each.
		runtime.Gosched()
		for {
			items, cancel, ok := b.take()
			if !ok {
				break
			}
			if err := send(items, cancel); err != nil {
				return err
			}
			b.recycle(items)
		}
	}
}

// clientMux is the host side of a batch stream: it gives each call an id,
// queues its item, and hands it the reply with that id.
//
// A call costs no timer and no context of its own: its deadline is kept
// with its waiter and a sweeper goroutine fails the calls whose deadline
// has passed (sweepEvery late at most; the plugin enforces the item's
// timeout itself, so the sweep is a backstop against a plugin that never
// answers). Reply channels are reused.
type clientMux[Out, In any] struct {
	// plugin names the plugin in errors.
	plugin   string
	setID    func(*Out, uint64, time.Duration)
	resultID func(*In) uint64
	stop     func() // cancels the stream

	out   *batcher[Out]
	chans sync.Pool // of chan *In, buffered 1

	mu   sync.Mutex
	next uint64
	wait map[uint64]waiter[In]
	err  error         // why the stream ended, set once
	done chan struct{} // closed when the stream has ended
}

// waiter is a call waiting for its reply: a reply, or nil when its
// deadline passed, is sent on ch by whoever removes it from wait.
type waiter[In any] struct {
	ch       chan *In
	deadline int64 // unix nanoseconds
}

// sweepEvery is how often calls past their deadline are failed.
const sweepEvery = 100 * time.Millisecond

// newClientMux starts the sender and receiver of st. stop must make a
// blocked st.recv return (cancel the stream's context). onEnd, if not nil,
// is called once when the stream ends, with the error calls then get.
func newClientMux[Out, In any](plugin string, st batchStream[Out, In], stop func(), setID func(*Out, uint64, time.Duration), resultID func(*In) uint64, onEnd func(error)) *clientMux[Out, In] {
	m := &clientMux[Out, In]{
		plugin:   plugin,
		setID:    setID,
		resultID: resultID,
		stop:     stop,
		out:      newBatcher[Out](),
		wait:     make(map[uint64]waiter[In]),
		done:     make(chan struct{}),
	}
	m.chans.New = func() any { return make(chan *In, 1) }
	go func() {
		if err := m.out.run(m.done, st.send); err != nil && m.end(err) && onEnd != nil {
			onEnd(m.Err())
		}
	}()
	go func() {
		for {
			replies, _, err := st.recv()
			if err != nil {
				if m.end(err) && onEnd != nil {
					onEnd(m.Err())
				}
				return
			}
			m.mu.Lock()
			for _, r := range replies {
				id := m.resultID(r)
				if w, ok := m.wait[id]; ok {
					delete(m.wait, id)
					w.ch <- r // buffered: never blocks
				}
			}
			m.mu.Unlock()
		}
	}()
	go m.sweep()
	return m
}

// sweep fails the calls whose deadline has passed, until the stream ends.
func (m *clientMux[Out, In]) sweep() {
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	var expired []uint64
	for {
		select {
		case <-m.done:
			return
		case now := <-t.C:
			expired = expired[:0]
			m.mu.Lock()
			for id, w := range m.wait {
				if w.deadline <= now.UnixNano() {
					delete(m.wait, id)
					w.ch <- nil // buffered: never blocks
					expired = append(expired, id)
				}
			}
			m.mu.Unlock()
			for _, id := range expired {
				m.out.push(nil, id) // the plugin may stop working on it
			}
		}
	}
}

// streamClient is what the host's clients of the streamed services
// (encoders, transport, pipeline) share: the connection, the options and
// the current stream, which Start replaces and Close ends.
type streamClient[Out, In any] struct {
	cc     grpc.ClientConnInterface
	desc   *grpc.StreamDesc
	method string
	// what names the stream in errors ("encode", "deliver", "pipeline").
	what     string
	wrap     func(grpc.ClientStream) batchStream[Out, In]
	setID    func(*Out, uint64, time.Duration)
	resultID func(*In) uint64

	mu   sync.Mutex
	opts StreamOptions
	mux  *clientMux[Out, In]
}

// Start opens the stream, replacing (and ending) the one before. Calls
// made before Start fail with ErrPluginUnavailable.
func (c *streamClient[Out, In]) Start(o StreamOptions) error {
	ctx, cancel := context.WithCancel(context.Background())
	st, err := c.cc.NewStream(ctx, c.desc, c.method, grpc.ForceCodecV2(wireCodec{}))
	if err != nil {
		cancel()
		return fmt.Errorf("%w: %s: open %s stream: %v", ErrPluginUnavailable, o.Plugin, c.what, err)
	}
	mux := newClientMux(o.Plugin, c.wrap(st), cancel, c.setID, c.resultID, o.OnEnd)
	c.mu.Lock()
	old := c.mux
	c.opts, c.mux = o, mux
	c.mu.Unlock()
	if old != nil {
		old.close()
	}
	return nil
}

// Close ends the stream; calls in flight fail with ErrPluginUnavailable.
func (c *streamClient[Out, In]) Close() {
	c.mu.Lock()
	mux := c.mux
	c.mu.Unlock()
	if mux != nil {
		mux.close()
	}
}

// current returns the stream and the options it was started with; the
// stream is nil before Start.
func (c *streamClient[Out, In]) current() (*clientMux[Out, In], StreamOptions) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mux, c.opts
}

// end marks the stream ended with err; calls in flight and later calls
// fail. It reports whether this call ended it.
func (m *clientMux[Out, In]) end(err error) bool {
	m.mu.Lock()
	if m.err != nil {
		m.mu.Unlock()
		return false
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = errors.New("stream closed")
	}
	m.err = fmt.Errorf("%w: %s: %v", ErrPluginUnavailable, m.plugin, err)
	m.wait = nil
	close(m.done)
	m.mu.Unlock()
	m.out.stop()
	m.stop()
	return true
}

// Err returns why the stream ended, nil while it is up.
func (m *clientMux[Out, In]) Err() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.err
}

// call sends item and waits for its reply, its deadline, ctx's end or the
// stream's end. Its deadline is timeout from now, or ctx's when that is
// earlier; the item carries what is left of it to the plugin.
func (m *clientMux[Out, In]) call(ctx context.Context, item *Out, timeout time.Duration) (*In, error) {
	now := time.Now()
	deadline := now.Add(timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	left := deadline.Sub(now)
	if left <= 0 {
		return nil, fmt.Errorf("plugin %s: %w", m.plugin, context.DeadlineExceeded)
	}
	ch := m.chans.Get().(chan *In)
	m.mu.Lock()
	if m.err != nil {
		err := m.err
		m.mu.Unlock()
		m.chans.Put(ch)
		return nil, err
	}
	m.next++
	id := m.next
	m.wait[id] = waiter[In]{ch: ch, deadline: deadline.UnixNano()}
	m.mu.Unlock()
	m.setID(item, id, left)
	if !m.out.push(item, 0) {
		return nil, m.Err()
	}

	select {
	case r := <-ch:
		m.chans.Put(ch)
		if r == nil {
			return nil, fmt.Errorf("plugin %s: no answer in %v: %w", m.plugin, timeout, context.DeadlineExceeded)
		}
		return r, nil
	case <-m.done:
		select {
		case r := <-ch:
			if r != nil {
				return r, nil
			}
		default:
		}
		return nil, m.Err()
	case <-ctx.Done():
		m.mu.Lock()
		_, waiting := m.wait[id]
		if waiting {
			delete(m.wait, id)
		}
		m.mu.Unlock()
		if !waiting {
			// The reply, the sweep or the stream's end came at the same
			// time.
			select {
			case r := <-ch:
				if r != nil {
					return r, nil
				}
			default:
				return nil, m.Err()
			}
		}
		m.out.push(nil, id)
		return nil, fmt.Errorf("plugin %s: %w", m.plugin, context.Cause(ctx))
	}
}

// close ends the stream from the host side.
func (m *clientMux[Out, In]) close() {
	m.end(errors.New("closed by the host"))
}

// serveMux is the plugin side of a batch stream: it runs each item in its
// own goroutine, with its own deadline, and sends the replies back in
// batches as they complete. It returns when the host ends the stream or
// the stream breaks, after cancelling and waiting for the items in flight.
//
// An item's deadline costs no timer: its context (itemContext) reports the
// deadline, and a sweep cancels the items whose deadline has passed every
// sweepEvery.
func serveMux[In, Out any](ctx context.Context, st batchStream[Out, In], itemID func(*In) (uint64, time.Duration), handle func(context.Context, *In) *Out) error {
	ctx, cancelAll := context.WithCancel(ctx)
	out := newBatcher[Out]()
	senderDone := make(chan struct{})
	go func() {
		defer close(senderDone)
		// A failed send means a broken stream, which recv reports too.
		_ = out.run(ctx.Done(), func(items []*Out, _ []uint64) error { return st.send(items, nil) })
	}()

	pool := gopool.New(workerIdle, ctx.Done())
	run := newRunning()
	go run.sweep(ctx.Done())
	var wg sync.WaitGroup
	// gRPC forbids Send once the handler has returned: stop the sender and
	// wait for it, and for every item, before returning.
	defer func() {
		cancelAll()
		wg.Wait()
		out.stop()
		<-senderDone
	}()
	for {
		items, cancel, err := st.recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		for _, it := range items {
			id, timeout := itemID(it)
			ictx, icancel := context.WithCancelCause(ctx)
			var ic *itemContext
			if timeout > 0 {
				ic = &itemContext{Context: ictx, deadline: time.Now().Add(timeout)}
				ictx = ic
			}
			run.add(id, icancel, ic)
			wg.Add(1)
			pool.Go(func() {
				defer wg.Done()
				r := handle(ictx, it)
				run.done(id)
				icancel(nil)
				out.push(r, 0)
			})
		}
		for _, id := range cancel {
			run.cancel(id)
		}
	}
}

// itemContext is an item's context on the plugin side: cancelled by the
// host, by the stream's end or, once its deadline has passed, by the sweep
// (with context.DeadlineExceeded as its error), and reporting that
// deadline without a timer of its own.
//
// A step of the item can have a shorter deadline of its own, also without
// a timer (limitStep): the pipeline's encoding, within the item that also
// delivers. While it runs, Deadline reports it, and once it passes the
// sweep cancels the whole item, as the step's own context.WithTimeout
// would have ended the step — and the item goes no further when its first
// step ran out of time.
type itemContext struct {
	context.Context // from context.WithCancelCause
	deadline        time.Time
	// stepBy is the deadline of the step in progress (unix ns), 0 for none.
	stepBy atomic.Int64
}

func (c *itemContext) Deadline() (time.Time, bool) {
	if by := c.stepBy.Load(); by != 0 && by < c.deadline.UnixNano() {
		return time.Unix(0, by), true
	}
	return c.deadline, true
}

// limitStep gives the step about to run a deadline of d from now, until
// endStep.
func (c *itemContext) limitStep(d time.Duration) { c.stepBy.Store(time.Now().Add(d).UnixNano()) }

func (c *itemContext) endStep() { c.stepBy.Store(0) }

// expired reports whether the item's deadline, or its step's, is past at now.
func (c *itemContext) expired(now time.Time) bool {
	by := c.stepBy.Load()
	return !now.Before(c.deadline) || (by != 0 && now.UnixNano() >= by)
}

// stepContext is ctx for a step of an item that may take at most d (no limit
// when d ≤ 0), and the function that ends the step. On the plugin side it
// costs no timer: the item's own context carries the step's deadline.
func stepContext(ctx context.Context, d time.Duration) (context.Context, func()) {
	if d <= 0 {
		return ctx, func() {}
	}
	if ic, ok := ctx.(*itemContext); ok {
		ic.limitStep(d)
		return ic, ic.endStep
	}
	return context.WithTimeout(ctx, d)
}

func (c *itemContext) Err() error {
	err := c.Context.Err()
	if err != nil && errors.Is(context.Cause(c.Context), context.DeadlineExceeded) {
		return context.DeadlineExceeded
	}
	return err
}

// running are the items in flight on the plugin side, by id.
type running struct {
	mu    sync.Mutex
	items map[uint64]runningItem
}

type runningItem struct {
	cancel context.CancelCauseFunc
	ctx    *itemContext // nil: no deadline
}

func newRunning() *running { return &running{items: map[uint64]runningItem{}} }

func (r *running) add(id uint64, cancel context.CancelCauseFunc, ctx *itemContext) {
	r.mu.Lock()
	r.items[id] = runningItem{cancel: cancel, ctx: ctx}
	r.mu.Unlock()
}

func (r *running) done(id uint64) {
	r.mu.Lock()
	delete(r.items, id)
	r.mu.Unlock()
}

// cancel cancels the item the host gave up on: at its deadline, or
// earlier for its own reasons. The host's sweep can be first to see the
// deadline, and the plugin counts it from when the item arrived, a little
// later than the host: a cancel that comes less than sweepEvery before
// the deadline is the deadline.
func (r *running) cancel(id uint64) {
	r.mu.Lock()
	it, ok := r.items[id]
	r.mu.Unlock()
	if !ok {
		return
	}
	if it.ctx != nil && it.ctx.expired(time.Now().Add(sweepEvery)) {
		it.cancel(context.DeadlineExceeded)
		return
	}
	it.cancel(context.Canceled)
}

// sweep cancels the items past their deadline every sweepEvery until done
// is closed.
func (r *running) sweep(done <-chan struct{}) {
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	var expired []context.CancelCauseFunc
	for {
		select {
		case <-done:
			return
		case now := <-t.C:
			expired = expired[:0]
			r.mu.Lock()
			for _, it := range r.items {
				if it.ctx != nil && it.ctx.expired(now) {
					expired = append(expired, it.cancel)
				}
			}
			r.mu.Unlock()
			for _, cancel := range expired {
				cancel(context.DeadlineExceeded)
			}
		}
	}
}

// workerIdle is how long an idle worker waits for more work before it
// exits.
const workerIdle = 10 * time.Second
