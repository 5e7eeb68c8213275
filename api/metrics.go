package api

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/callbackd/callbackd/dispatcher"
	"github.com/callbackd/callbackd/expiry"
	"github.com/callbackd/callbackd/subjects"
)

// otherEventType is the event_type label of events whose type is not one of
// MetricsOptions.EventTypes: publishers choose event types, so they must not
// choose how many time series there are.
const otherEventType = "_other"

// gaugeTimeout bounds each callback behind a gauge at scrape time.
const gaugeTimeout = 2 * time.Second

// ValueFunc reports one value at scrape time, for example a consumer's
// num_pending read from NATS. An error leaves the metric out of that scrape.
type ValueFunc func(ctx context.Context) (float64, error)

// MetricsOptions configure Metrics. Every field may be left zero.
type MetricsOptions struct {
	// EventTypes are the event types labelled by name (the configured
	// encoders); any other type is counted as "_other". Empty labels every
	// type by name.
	EventTypes []string
	// PendingRetries reports the deliveries waiting in CALLBACKS_RETRY.
	PendingRetries ValueFunc
	// ConsumerLag reports num_pending of the dispatcher consumer.
	ConsumerLag ValueFunc
	// PluginRestarts reports how many times plugin processes were
	// restarted since start (a counter).
	PluginRestarts ValueFunc
	// SettingsRevision reports the settings bucket revision that the
	// dispatcher's view has applied.
	SettingsRevision ValueFunc
	// Logger receives a warning when a ValueFunc fails; nil discards.
	Logger *slog.Logger
}

// Metrics holds callbackd's Prometheus metrics in a registry of its own
// (never the global default) and implements dispatcher.Observer and
// expiry.Observer, so the dispatcher and the expiry counter feed it
// directly. Safe for concurrent use.
type Metrics struct {
	reg        *prometheus.Registry
	known      map[string]bool
	deliveries *prometheus.CounterVec
	attempts   *prometheus.HistogramVec
	inFlight   prometheus.Gauge
	dead       *prometheus.CounterVec
	parked     *prometheus.CounterVec
	expired    *prometheus.CounterVec
}

var (
	_ dispatcher.Observer = (*Metrics)(nil)
	_ expiry.Observer     = (*Metrics)(nil)
)

// NewMetrics registers callbackd's metrics, the Go runtime's and the
// process's in a new registry.
func NewMetrics(o MetricsOptions) *Metrics {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "callbackd",
			Name:      "deliveries_total",
			Help:      "Events by outcome (delivered, retrying, failed, skipped, no_destination, invalid, destination_not_allowed) and event type.",
		}, []string{"event_type", "outcome"}),
		attempts: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "callbackd",
			Name:      "delivery_attempt_duration_seconds",
			Help:      "Duration of delivery attempts by event type and transport outcome (delivered, retryable, final, not_allowed).",
			// From a fast local endpoint to the 30 s timeout.
			Buckets: []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60},
		}, []string{"event_type", "outcome"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "callbackd",
			Name:      "deliveries_in_flight",
			Help:      "Delivery attempts in flight.",
		}),
		dead: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "callbackd",
			Name:      "dead_letters_total",
			Help:      "Events sent to CALLBACKS_DEAD by reason.",
		}, []string{"reason"}),
		parked: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "callbackd",
			Name:      "parked_total",
			Help:      "Deliveries parked in CALLBACKS_RETRY over their host's concurrency cap, by reason (over_cap: the dispatcher's queue for the host was full or the host stalled; host_busy: the transport found the host's slots full).",
		}, []string{"reason"}),
		expired: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "callbackd",
			Name:      "events_expired_total",
			Help:      "Events removed by their stream's max age (retention.events) before callbackd acked them, by stream (CALLBACKS, CALLBACKS_RETRY).",
		}, []string{"stream"}),
	}
	// Both series exist from the start: an expiry is rare, and an absent
	// series cannot be told from a missing metric.
	m.expired.WithLabelValues(subjects.Stream)
	m.expired.WithLabelValues(subjects.RetryStream)
	m.parked.WithLabelValues(dispatcher.ParkedOverCap)
	m.parked.WithLabelValues(dispatcher.ParkedHostBusy)
	if len(o.EventTypes) > 0 {
		m.known = make(map[string]bool, len(o.EventTypes))
		for _, t := range o.EventTypes {
			m.known[t] = true
		}
	}
	m.reg.MustRegister(m.deliveries, m.attempts, m.inFlight, m.dead, m.parked, m.expired,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	if o.PendingRetries != nil {
		m.reg.MustRegister(newFuncCollector(log, "callbackd_retries_pending",
			"Deliveries waiting in CALLBACKS_RETRY for a later attempt.", prometheus.GaugeValue, o.PendingRetries))
	}
	if o.ConsumerLag != nil {
		m.reg.MustRegister(newFuncCollector(log, "callbackd_consumer_lag",
			"Messages of CALLBACKS not yet delivered to the dispatcher consumer (num_pending).", prometheus.GaugeValue, o.ConsumerLag))
	}
	if o.PluginRestarts != nil {
		m.reg.MustRegister(newFuncCollector(log, "callbackd_plugin_restarts_total",
			"Plugin process restarts since start.", prometheus.CounterValue, o.PluginRestarts))
	}
	if o.SettingsRevision != nil {
		m.reg.MustRegister(newFuncCollector(log, "callbackd_settings_revision",
			"Revision of the settings bucket that the dispatcher's view has applied: a setting written at revision r is in use once this is at least r.", prometheus.GaugeValue, o.SettingsRevision))
	}
	return m
}

// Registry returns the registry /metrics serves, so that other parts of
// callbackd can register metrics of their own.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

func (m *Metrics) eventType(t string) string {
	if m.known == nil || m.known[t] {
		return t
	}
	return otherEventType
}

// Outcome counts an event's end or step (dispatcher.Observer).
func (m *Metrics) Outcome(eventType, outcome string) {
	m.deliveries.WithLabelValues(m.eventType(eventType), outcome).Inc()
}

// Attempt observes one delivery attempt (dispatcher.Observer).
func (m *Metrics) Attempt(eventType, outcome string, d time.Duration) {
	m.attempts.WithLabelValues(m.eventType(eventType), outcome).Observe(d.Seconds())
}

// InFlight moves the in-flight gauge (dispatcher.Observer).
func (m *Metrics) InFlight(delta int) { m.inFlight.Add(float64(delta)) }

// DeadLettered counts a dead letter (dispatcher.Observer).
func (m *Metrics) DeadLettered(reason string) { m.dead.WithLabelValues(reason).Inc() }

// Parked counts work parked over its host's cap (dispatcher.Observer).
func (m *Metrics) Parked(reason string) { m.parked.WithLabelValues(reason).Inc() }

// Expired counts events a stream removed at its max age before they were
// acked (expiry.Observer).
func (m *Metrics) Expired(stream string, n int) {
	m.expired.WithLabelValues(stream).Add(float64(n))
}

// funcCollector reports the value of a ValueFunc at each scrape.
type funcCollector struct {
	name string
	desc *prometheus.Desc
	typ  prometheus.ValueType
	fn   ValueFunc
	log  *slog.Logger
	// failing is set while the value is not available: warned once, then
	// at debug level until it is again.
	failing atomic.Bool
}

func newFuncCollector(log *slog.Logger, name, help string, typ prometheus.ValueType, fn ValueFunc) *funcCollector {
	return &funcCollector{name: name, desc: prometheus.NewDesc(name, help, nil, nil), typ: typ, fn: fn, log: log}
}

func (c *funcCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *funcCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), gaugeTimeout)
	defer cancel()
	v, err := c.fn(ctx)
	if err != nil {
		level := slog.LevelDebug
		if !c.failing.Swap(true) {
			level = slog.LevelWarn
		}
		c.log.Log(ctx, level, "metrics: value not available; left out of the scrape", "metric", c.name, "err", err)
		return
	}
	if c.failing.Swap(false) {
		c.log.Info("metrics: value available again", "metric", c.name)
	}
	ch <- prometheus.MustNewConstMetric(c.desc, c.typ, v)
}
