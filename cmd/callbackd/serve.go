package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/callbackd/callbackd/api"
	"github.com/callbackd/callbackd/config"
	"github.com/callbackd/callbackd/deliverylog"
	"github.com/callbackd/callbackd/dispatcher"
	"github.com/callbackd/callbackd/embedded"
	"github.com/callbackd/callbackd/expiry"
	"github.com/callbackd/callbackd/plugins"
	"github.com/callbackd/callbackd/settings"
)

func newServeCmd() *cobra.Command {
	var updateStreams bool
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the dispatcher (and the embedded NATS server unless nats.embedded is false)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			err = serve(cmd.Context(), cfg, log, updateStreams)
			if err != nil && cmd.Context().Err() != nil && errors.Is(err, context.Canceled) {
				// SIGTERM while still starting (waiting for NATS, say) is a
				// clean stop, not a failure.
				log.Info("stopped during start-up")
				return nil
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&updateStreams, "update-streams", false, "apply callbackd's stream and consumer config to existing ones that differ")
	return cmd
}

// hostWindow is how many attempts per host the dispatcher hands the
// transport at once: twice the per-host cap when the transport holds the
// cap itself (the built-in http-form) in a plugin process, so that the next
// request to a busy host is already waiting beside it rather than two
// crossings away; else the cap. In-process, a round trip through the
// dispatcher is cheap and the second queue only cost (measured: 0.93 →
// 0.82 of the floor at the default cap).
func hostWindow(cfg *config.Config, ps *pluginSet) int {
	if ps.TransportCapsHosts && cfg.Plugins.Builtins != "inprocess" {
		return 2 * cfg.Dispatcher.PerHostConcurrency
	}
	return cfg.Dispatcher.PerHostConcurrency
}

// serve runs callbackd until ctx is done (SIGINT/SIGTERM), then drains.
func serve(ctx context.Context, cfg *config.Config, log *slog.Logger, updateStreams bool) error {
	tuneServeGC(cfg.Plugins.Builtins, log)
	// Plugins first: a refused or missing plugin stops start-up before
	// NATS is touched.
	ps, err := startPlugins(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer ps.Close()
	transport := ps.Transport

	// The admin API listens from here on: /healthz answers, and /readyz
	// says what start-up waits for, however long NATS takes.
	adm, err := listenAPI(ctx, cfg, log, adminLimits{})
	if err != nil {
		return err
	}
	defer shutdownAPI(adm)

	if cfg.NATS.Embedded {
		adm.setPhase("starting the embedded NATS server")
	} else {
		adm.setPhase("connecting to NATS at " + redactURLs(cfg.NATS.URL))
	}
	nc, srv, err := startNATS(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer func() {
		closeNATS(nc)
		if srv != nil {
			srv.Shutdown()
		}
	}()
	if srv != nil && srv.ClientURL() != "" {
		log.Info("embedded NATS listening", "url", srv.ClientURL(), "data_dir", cfg.DataDir)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}

	// In a cluster that is still forming, creating replicated streams fails
	// until enough nodes have joined: retried, bounded.
	var top dispatcher.Topology
	adm.setPhase("making the streams")
	err = ensureJetStream(ctx, log, nc, "streams", func(ctx context.Context) (err error) {
		top, err = dispatcher.EnsureStreams(ctx, js, streamOptions(cfg, updateStreams), log)
		return err
	})
	if err != nil {
		return err
	}
	// The view warns about stored URLs that the outbound policy refuses
	// (their deliveries end as destination_not_allowed); the store reads a
	// key whose stored value is invalid from the view, which holds the
	// value in effect.
	guard := plugins.NewGuard(cfg.Delivery.AllowPrivate, cfg.AllowCIDRs())
	view := settings.NewView(log.With("component", "settings"), settings.ViewOptions{Guard: guard})
	var store *settings.Store
	adm.setPhase("opening the settings bucket")
	err = ensureJetStream(ctx, log, nc, "settings bucket", func(ctx context.Context) (err error) {
		store, err = settings.OpenStore(ctx, js, settings.StoreOptions{Replicas: cfg.NATS.Replicas, View: view})
		return err
	})
	if err != nil {
		return err
	}

	// The delivery log is written asynchronously; it is flushed after the
	// dispatcher has drained (defers run last-in first-out).
	logw := deliverylog.NewWriter(js, log.With("component", "deliverylog"), deliverylog.WriterOptions{})
	defer func() {
		fctx, fcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer fcancel()
		_ = logw.Close(fctx)
	}()

	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { _ = view.Run(runCtx, store.KV()) })
	// Cancel, then wait: on an error below (the admin port in use, say)
	// ctx is still live, and waiting first would hang serve.
	defer func() {
		cancel()
		wg.Wait()
	}()

	var pluginRestarts api.ValueFunc
	if ps.manager != nil {
		pluginRestarts = pluginRestartCount(ps.manager)
	}
	metrics := newMetrics(cfg, top, view, log, pluginRestarts)
	// Its bucket, like the streams, under the retries for a forming
	// cluster (once, under load, it took longer than one API call's
	// timeout and serve exited).
	adm.setPhase("starting the dispatcher")
	var state jetstream.KeyValue
	err = ensureJetStream(ctx, log, nc, "state bucket", func(ctx context.Context) (err error) {
		state, err = expiry.OpenState(ctx, js, cfg.NATS.Replicas)
		return err
	})
	if err != nil {
		return err
	}
	// Started before the dispatcher consumes: its first sample counts what
	// expired while no instance ran (SPEC §2). The bucket is the one opened
	// under retries above: opening it again, bounded by one API call's
	// timeout, failed start-up once under load.
	exp, err := expiry.Start(ctx, js, expiry.Options{
		Observer: metrics,
		Logger:   log.With("component", "expiry"),
		State:    state,
	})
	if err != nil {
		return err
	}
	defer exp.Close()
	d, err := dispatcher.New(js, top, view, dispatcherOptions(cfg, ps, log, metrics, logw))
	if err != nil {
		return err
	}
	if err := adm.serveAPI(cfg, log, apiDeps{NC: nc, JS: js, Store: store, View: view, Transport: transport, Metrics: metrics, Plugins: ps.manager, Storage: storageCheck(srv, d),
		BuiltinsInProcess: cfg.Plugins.Builtins == "inprocess"}); err != nil {
		return err
	}
	log.Info("callbackd serving", "version", version)
	stopping := context.AfterFunc(ctx, func() {
		log.Info("stopping: finishing the deliveries in flight, handing back the rest")
	})
	defer stopping()
	err = d.Run(ctx)
	// Before NATS closes (the deferred calls run after this one).
	shutdownAPI(adm)
	log.Info("callbackd stopped")
	return err
}

// shutdownAPI stops the admin API, giving requests in progress 5 s.
func shutdownAPI(adm *adminAPI) {
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	_ = adm.Shutdown(sctx)
}

// storageCheck is /readyz's storage check: the dispatcher's writes refused
// for lack of storage lately, or a critical write error of the embedded
// server (srv nil: an external one), which refuses every write to the
// stream it hit — free space or not — until callbackd restarts.
func storageCheck(srv *embedded.Server, d *dispatcher.Dispatcher) func() error {
	return func() error {
		if srv != nil {
			if err := srv.WriteErr(); err != nil {
				return fmt.Errorf("the embedded NATS server could not write to data_dir (%v) and refuses writes to that stream until callbackd is restarted: free disk space, then restart", err)
			}
		}
		return d.StorageErr()
	}
}

// streamOptions are the settings of callbackd's streams and consumers from
// cfg (SPEC §2, §3); update applies them to existing ones that differ.
func streamOptions(cfg *config.Config, update bool) dispatcher.StreamOptions {
	return dispatcher.StreamOptions{
		Replicas:        cfg.NATS.Replicas,
		Duplicates:      cfg.NATS.Duplicates,
		RetentionEvents: cfg.Retention.Events,
		RetentionDead:   cfg.Retention.Dead,
		RetentionLog:    cfg.Retention.Log,
		LogBytes:        int64(cfg.Retention.LogBytes),
		AckWait:         cfg.AckWait(),
		MaxAckPending:   cfg.Dispatcher.MaxAckPending,
		MaxRetryPending: cfg.Dispatcher.MaxRetryPending,
		Update:          update,
	}
}

// dispatcherOptions wires the dispatcher as serve runs it: cfg's settings,
// the plugins, the metrics and the delivery log.
func dispatcherOptions(cfg *config.Config, ps *pluginSet, log *slog.Logger, metrics *api.Metrics, logw *deliverylog.Writer) dispatcher.Options {
	return dispatcher.Options{
		Workers:            cfg.Dispatcher.Workers,
		MaxPayload:         int64(cfg.Dispatcher.MaxPayload),
		MaxDeliveries:      cfg.Dispatcher.MaxDeliveries,
		DeliveryTimeout:    cfg.Delivery.Timeout,
		CallTimeout:        cfg.Plugins.CallTimeout,
		Encoders:           ps.Encoders,
		Transport:          ps.Transport,
		Failure:            ps.Failure,
		MaxAttempts:        cfg.Delivery.MaxAttempts,
		Backoff:            cfg.Delivery.Backoff,
		PerHostConcurrency: cfg.Dispatcher.PerHostConcurrency,
		HostWindow:         hostWindow(cfg, ps),
		MaxInFlight:        cfg.Delivery.MaxInFlight,
		Logger:             log.With("component", "dispatcher"),
		Observer:           metrics,
		Recorder:           logw,
	}
}
