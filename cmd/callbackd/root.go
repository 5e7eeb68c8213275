package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/callbackd/callbackd/config"
)

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "callbackd",
		Short:         "Deliver API callback notifications from NATS to customer URLs",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	config.RegisterFlags(root.PersistentFlags())
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(
		newServeCmd(),
		newPublishCmd(),
		newSettingsCmd("project"),
		newSettingsCmd("account"),
		newSettingsCmd("sso-client"),
		newDeliveriesCmd(), newReplayCmd(),
		newPluginsCmd(), newPluginCmd(),
		newVersionCmd(),
	)
	return root
}

// loadConfig loads the layered config for a command and sets up logging.
func loadConfig(cmd *cobra.Command) (*config.Config, *slog.Logger, error) {
	cfg, warnings, err := config.Load(flagSet(cmd), os.Environ())
	if err != nil {
		return nil, nil, err
	}
	log := newLogger(cfg.Log, os.Stderr)
	for _, w := range warnings {
		log.Warn(w)
	}
	return cfg, log, nil
}

// flagSet returns every flag the command accepts, its own and inherited.
func flagSet(cmd *cobra.Command) *pflag.FlagSet {
	fs := pflag.NewFlagSet(cmd.Name(), pflag.ContinueOnError)
	fs.AddFlagSet(cmd.Flags())
	fs.AddFlagSet(cmd.InheritedFlags())
	return fs
}

func newLogger(c config.Log, w *os.File) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(strings.ToUpper(c.Level)))
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print callbackd's version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "callbackd %s\n", version)
			return err
		},
	}
}
