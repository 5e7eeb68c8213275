package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// phase is one measured part of a scenario.
type phase struct {
	// N is how many events were published.
	N int `json:"n"`
	// Received is how many of them reached the sink (distinct ids).
	Received int `json:"received"`
	// Seconds is, for a backlog, from the sink's release of its answers to
	// the last event's arrival; for the steady load, the publishing time.
	Seconds float64 `json:"seconds"`
	// Rate is deliveries per second (backlog: Received / Seconds).
	Rate float64 `json:"rate"`
	// CPU is the CPU seconds of the target's process tree over the phase.
	CPU float64 `json:"cpu"`
	// SinkCPU is the sink's CPU seconds over the phase.
	SinkCPU float64 `json:"sink_cpu"`
	// Conns is how many TCP connections the sink accepted during the
	// phase: more than the sender's concurrency means keep-alive
	// connections are being closed and dialled again.
	Conns int `json:"conns"`
	// MaxGap is the longest time between two arrivals of a backlog.
	MaxGap time.Duration `json:"max_gap,omitempty"`
	// MachineBusy is how many CPUs of the machine were busy on average
	// over the phase (everything: target, sink, driver, others).
	MachineBusy float64 `json:"machine_busy"`
	// PeakRSS and PeakPSS are the largest sums over the process tree
	// sampled during the phase, in bytes.
	PeakRSS int64 `json:"peak_rss"`
	PeakPSS int64 `json:"peak_pss"`
	// Parks is how many times callbackd parked work in CALLBACKS_RETRY
	// over the per-host cap during the phase.
	Parks uint64 `json:"parks"`
	// Latency percentiles, publish to sink receive (steady load only).
	P50  time.Duration `json:"p50"`
	P99  time.Duration `json:"p99"`
	P999 time.Duration `json:"p999"`
	Max  time.Duration `json:"max"`
}

// CPUPer10k is CPU seconds per 10,000 deliveries.
func (p phase) CPUPer10k() float64 {
	if p.Received == 0 {
		return 0
	}
	return p.CPU / float64(p.Received) * 10000
}

// driver runs the phases of one scenario against one target. Every count
// it reads of the sink is of its target's path (scenario.HookPath): other
// scenarios' targets are up at the same time.
type driver struct {
	tl      *tools
	t       *target
	sampler *sampler
	nonce   string
	// published counts every event published to the target, warm-up
	// included, for the ledger.
	published int
}

// count is the sink's count of the requests to this target's path.
func (d *driver) count() (distinct, requests, bad int, err error) {
	return d.tl.sink.CountPath(d.t.sc.HookPath())
}

func (d *driver) msgID(phase string, i int) string {
	return d.nonce + "-" + d.t.sc.Name + "-" + phase + "-" + strconv.Itoa(i)
}

// publishAsync publishes event i of phase and returns its delivery id.
func (d *driver) publishAsync(phase string, i int) (string, error) {
	id := d.msgID(phase, i)
	for {
		_, err := d.t.js.PublishAsync(d.t.Subject(), d.t.sc.payload(i), jetstream.WithMsgID(id))
		if errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("publish: %w", err)
		}
		d.published++
		return deliveryID(id), nil
	}
}

// flush waits until every asynchronous publish is acknowledged.
func (d *driver) flush(ctx context.Context) error {
	select {
	case <-d.t.js.PublishAsyncComplete():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(time.Minute):
		return errors.New("publishes not acknowledged after a minute")
	}
}

// waitDistinct polls the sink until it has seen want distinct ids on the
// target's path, the target dies, or timeout passes; it returns the count
// last seen.
func (d *driver) waitDistinct(want int, timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	for {
		n, _, _, err := d.count()
		if err != nil {
			return 0, err
		}
		if n >= want {
			return n, nil
		}
		if time.Now().After(deadline) {
			return n, fmt.Errorf("sink has %d of %d distinct deliveries after %s", n, want, timeout)
		}
		if !d.t.Alive() {
			return n, fmt.Errorf("%s exited:\n%s", d.t.sc.Name, d.t.logTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// warmUp waits until an event reaches the sink (the settings view has the
// project's URL), then sends n events through to warm connections, plugin
// processes and the heap.
func (d *driver) warmUp(ctx context.Context, n int) error {
	base, _, _, err := d.count()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for i := 1; ; i++ {
		if _, err := d.publishAsync("probe", i); err != nil {
			return err
		}
		if err := d.flush(ctx); err != nil {
			return err
		}
		got, _ := d.waitDistinct(base+1, 200*time.Millisecond)
		if got > base {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no probe event delivered in 30 s:\n%s", d.t.logTail())
		}
	}
	return d.sendThrough(ctx, "warmup", n)
}

// sendThrough publishes n events of phase (a name no other phase of the
// target uses: it keeps message ids apart) and waits until all of them
// reached the sink. Nothing is measured.
func (d *driver) sendThrough(ctx context.Context, phase string, n int) error {
	base, _, _, err := d.count()
	if err != nil {
		return err
	}
	for i := 1; i <= n; i++ {
		if _, err := d.publishAsync(phase, i); err != nil {
			return err
		}
	}
	if err := d.flush(ctx); err != nil {
		return err
	}
	_, err = d.waitDistinct(base+n, time.Minute)
	_, _ = d.tl.sink.Records() // not measured
	return err
}

// marks are the counters a phase reads at its start and end.
type marks struct {
	parks           uint64
	conns           int
	cpu, sink, busy float64
}

// mark reads the counters at the start of a phase.
func (d *driver) mark(ctx context.Context) (marks, error) {
	var m marks
	var err error
	if _, m.parks, err = d.t.streamCount(ctx, retryStream); err != nil {
		return m, err
	}
	if m.conns, err = d.tl.sink.Conns(); err != nil {
		return m, err
	}
	m.cpu, m.sink = treeCPU(d.t.PID()), d.tl.sink.CPU()
	m.busy, _ = machineCPU()
	return m, nil
}

// measure fills p's CPU, memory, connection and park figures for the phase
// from start to end that began with m0.
func (d *driver) measure(ctx context.Context, p *phase, m0 marks, start, end time.Time) {
	p.CPU, p.SinkCPU = treeCPU(d.t.PID())-m0.cpu, d.tl.sink.CPU()-m0.sink
	busy1, _ := machineCPU()
	p.MachineBusy = (busy1 - m0.busy) / end.Sub(start).Seconds()
	peak := d.sampler.peak(start, end)
	p.PeakRSS, p.PeakPSS = peak.rss, peak.pss
	if conns1, err := d.tl.sink.Conns(); err == nil {
		p.Conns = conns1 - m0.conns
	}
	if _, parks1, err := d.t.streamCount(ctx, retryStream); err == nil {
		p.Parks = parks1 - m0.parks
	}
}

// backlog publishes n events and measures the drain of what is left of
// them once the last publish is acknowledged (the target consumes while
// they are published). With hold (-hold), the sink instead holds its
// answers while the backlog is published and the drain is measured from
// their release.
func (d *driver) backlog(ctx context.Context, name string, n int) (phase, error) {
	p := phase{N: n}
	d.sampler.measuring(true)
	defer d.sampler.measuring(false)
	base, _, _, err := d.count()
	if err != nil {
		return p, err
	}
	if d.tl.hold {
		// The target pulls what its in-flight limits allow and waits.
		if err := d.tl.sink.Hold(true); err != nil {
			return p, err
		}
		defer func() { _ = d.tl.sink.Hold(false) }()
	}
	ids := make(map[string]struct{}, n)
	for i := 1; i <= n; i++ {
		id, err := d.publishAsync(name, i)
		if err != nil {
			return p, err
		}
		ids[id] = struct{}{}
	}
	if err := d.flush(ctx); err != nil {
		return p, err
	}
	m0, err := d.mark(ctx)
	if err != nil {
		return p, err
	}
	if d.tl.hold {
		if err := d.tl.sink.Hold(false); err != nil {
			return p, err
		}
	}
	start := time.Now()
	// At least 200 deliveries/s, or the phase is a failure anyway.
	_, werr := d.waitDistinct(base+n, max(time.Minute, time.Duration(n)*5*time.Millisecond))
	d.measure(ctx, &p, m0, start, time.Now())
	recs, err := d.tl.sink.Records()
	if err != nil {
		return p, err
	}
	// The drain is what arrived from start on: without -hold the target
	// delivered part of the backlog while it was being published.
	var last int64
	seen := make(map[string]struct{}, n)
	for _, r := range recs {
		if _, ok := ids[r.id]; !ok || r.at < start.UnixNano() {
			continue
		}
		seen[r.id] = struct{}{}
		last = max(last, r.at)
	}

	p.Received = len(seen)
	// The longest pause in arrivals once the sink lets answers go: a
	// consumer that stops pulling shows here (the floor's first version,
	// on Consume/Messages, stalled for the 30 s pull expiry now and then).
	ats := make([]int64, 0, len(seen))
	for _, r := range recs {
		if _, ok := ids[r.id]; ok && r.at >= start.UnixNano() {
			ats = append(ats, r.at)
		}
	}
	slices.Sort(ats)
	prev := start.UnixNano()
	for _, a := range ats {
		p.MaxGap = max(p.MaxGap, time.Duration(a-prev))
		prev = a
	}
	if os.Getenv("BENCH_DEBUG") != "" {
		const step = int64(250 * time.Millisecond)
		buckets := map[int64]int{}
		for _, a := range ats {
			buckets[(a-start.UnixNano())/step]++
		}
		var line []string
		for b := int64(0); b <= (last-start.UnixNano())/step; b++ {
			line = append(line, strconv.Itoa(buckets[b]))
		}
		fmt.Fprintf(os.Stderr, "debug: %s arrivals per 250 ms: %s\n", name, strings.Join(line, " "))
	}
	if last > 0 {
		p.Seconds = time.Unix(0, last).Sub(start).Seconds()
		p.Rate = float64(p.Received) / p.Seconds
	}
	return p, werr
}

// steady publishes at rate events/s for dur, each at its due time, and
// measures publish→receive latency.
func (d *driver) steady(ctx context.Context, rate int, dur time.Duration) (phase, error) {
	n := int(float64(rate) * dur.Seconds())
	p := phase{N: n}
	d.sampler.measuring(true)
	defer d.sampler.measuring(false)
	base, _, _, err := d.count()
	if err != nil {
		return p, err
	}
	sent := make(map[string]int64, n)
	interval := time.Second / time.Duration(rate)
	m0, err := d.mark(ctx)
	if err != nil {
		return p, err
	}
	start := time.Now()
	for i := 1; i <= n; i++ {
		if wait := time.Until(start.Add(time.Duration(i-1) * interval)); wait > 0 {
			time.Sleep(wait)
		}
		at := time.Now().UnixNano()
		id, err := d.publishAsync("steady", i)
		if err != nil {
			return p, err
		}
		sent[id] = at
	}
	p.Seconds = time.Since(start).Seconds()
	if err := d.flush(ctx); err != nil {
		return p, err
	}
	_, werr := d.waitDistinct(base+n, 30*time.Second)
	d.measure(ctx, &p, m0, start, time.Now())
	recs, err := d.tl.sink.Records()
	if err != nil {
		return p, err
	}
	lat := make([]time.Duration, 0, n)
	var timeline strings.Builder
	timeline.WriteString("published_ms,latency_us\n")
	for _, r := range recs {
		at, ok := sent[r.id]
		if !ok {
			continue
		}
		delete(sent, r.id) // the first arrival counts
		lat = append(lat, time.Duration(r.at-at))
		fmt.Fprintf(&timeline, "%.3f,%d\n", float64(at-start.UnixNano())/1e6, (r.at-at)/1e3)
	}
	// The timeline, in the scenario's directory (kept with -keep), places a
	// tail in time, to set beside the target's log.
	if err := os.WriteFile(filepath.Join(d.t.dir, "steady.csv"), []byte(timeline.String()), 0o644); err != nil {
		return p, fmt.Errorf("write steady timeline: %w", err)
	}
	p.Received = len(lat)
	p.Rate = float64(p.Received) / p.Seconds
	slices.Sort(lat)
	p.P50, p.P99, p.P999 = percentile(lat, 0.50), percentile(lat, 0.99), percentile(lat, 0.999)
	if len(lat) > 0 {
		p.Max = lat[len(lat)-1]
	}
	return p, werr
}

// percentile is the nearest-rank percentile of sorted values.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// ledger is the accounting of one scenario (SPEC §8): every event published
// is delivered, dead-lettered, skipped or acked without destination.
type ledger struct {
	Published     int `json:"published"`
	Delivered     int `json:"delivered"` // distinct delivery ids at the sink
	Dead          int `json:"dead"`
	Skipped       int `json:"skipped"`
	NoDestination int `json:"no_destination"`
	Duplicates    int `json:"duplicates"` // requests beyond the first per id
	BadBodies     int `json:"bad_bodies"`
	PublishErrors int `json:"publish_errors"`
}

// OK reports whether the ledger balances.
func (l ledger) OK() bool {
	return l.PublishErrors == 0 && l.Published == l.Delivered+l.Dead+l.Skipped+l.NoDestination
}

// plus is the ledger of two instances of one scenario.
func (l ledger) plus(m ledger) ledger {
	return ledger{
		Published: l.Published + m.Published, Delivered: l.Delivered + m.Delivered, Dead: l.Dead + m.Dead,
		Skipped: l.Skipped + m.Skipped, NoDestination: l.NoDestination + m.NoDestination,
		Duplicates: l.Duplicates + m.Duplicates, BadBodies: l.BadBodies + m.BadBodies, PublishErrors: l.PublishErrors + m.PublishErrors,
	}
}

func (l ledger) String() string {
	rel := "="
	if !l.OK() {
		rel = "≠"
	}
	return fmt.Sprintf("%d %s %d+%d+%d+%d", l.Published, rel, l.Delivered, l.Dead, l.Skipped, l.NoDestination)
}

// settle waits until the ledger balances (or 30 s pass) and returns it;
// sinkDistinct0, sinkRequests0 and sinkBad0 are the sink's counts of the
// target's path before the target started.
func (d *driver) settle(ctx context.Context, sinkDistinct0, sinkRequests0, sinkBad0 int) (ledger, error) {
	var l ledger
	deadline := time.Now().Add(30 * time.Second)
	for {
		distinct, requests, bad, err := d.count()
		if err != nil {
			return l, err
		}
		dead, _, err := d.t.streamCount(ctx, deadStream)
		if err != nil {
			return l, err
		}
		out, err := d.t.outcomes()
		if err != nil {
			return l, err
		}
		l = ledger{
			Published: d.published, Delivered: distinct - sinkDistinct0, Dead: int(dead),
			Skipped: int(out["skipped"]), NoDestination: int(out["no_destination"]),
			Duplicates: (requests - sinkRequests0) - (distinct - sinkDistinct0),
			BadBodies:  bad - sinkBad0, PublishErrors: int(d.t.pubErrs.Load()),
		}
		if l.OK() || time.Now().After(deadline) {
			return l, nil
		}
		time.Sleep(200 * time.Millisecond)
	}
}
