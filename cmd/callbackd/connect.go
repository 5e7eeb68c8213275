package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/callbackd/callbackd/config"
	"github.com/callbackd/callbackd/embedded"
)

// startNATS starts the embedded server when configured and connects to NATS.
// srv is nil for an external server.
func startNATS(ctx context.Context, cfg *config.Config, log *slog.Logger) (*nats.Conn, *embedded.Server, error) {
	if !cfg.NATS.Embedded {
		nc, err := dialNATS(cfg, log)
		return nc, nil, err
	}
	srv, err := embedded.Start(ctx, embedded.Options{
		DataDir:    cfg.DataDir,
		Listen:     cfg.NATS.Listen,
		ServerName: cfg.NATS.ServerName,
		Logger:     log.With("component", "nats"),
		Debug:      cfg.Log.Level == "debug",
	})
	if err != nil {
		return nil, nil, err
	}
	nc, err := srv.Connect(connOptions(log)...)
	if err != nil {
		srv.Shutdown()
		return nil, nil, err
	}
	return nc, srv, nil
}

// dialNATS connects a client to the configured NATS: the external URL, or
// the embedded server's listener of a running `callbackd serve`.
func dialNATS(cfg *config.Config, log *slog.Logger) (*nats.Conn, error) {
	url := cfg.NATS.URL
	if cfg.NATS.Embedded {
		if cfg.NATS.Listen == "" {
			return nil, fmt.Errorf("nats.listen is empty: the embedded server of callbackd serve has no client port to reach")
		}
		url = "nats://" + cfg.NATS.Listen
	}
	opts := connOptions(log)
	if cfg.NATS.Credentials != "" {
		opts = append(opts, nats.UserCredentials(cfg.NATS.Credentials))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w (is callbackd serve running?)", url, err)
	}
	return nc, nil
}

func connOptions(log *slog.Logger) []nats.Option {
	return []nats.Option{
		nats.Name("callbackd"),
		nats.Timeout(5 * time.Second),
		nats.MaxReconnects(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("nats reconnected", "url", nc.ConnectedUrlRedacted()) }),
	}
}
