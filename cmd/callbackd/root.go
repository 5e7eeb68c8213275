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
	root.SetHelpCommand(&cobra.Command{
		Use:   "help [command]",
		Short: "Help about any command",
		RunE: func(c *cobra.Command, args []string) error {
			// cobra's own help prints the root's help, exit 0, for a
			// command that does not exist.
			cmd, rest, err := c.Root().Find(args)
			if err != nil || len(rest) > 0 {
				return usageError{fmt.Errorf("help: unknown command %q", strings.Join(args, " "))}
			}
			return cmd.Help()
		},
	})
	usageErrors(root)
	return root
}

// usageErrors makes every way of calling a command wrongly a usageError
// (exit status 2, one line): a wrong number of arguments, a required flag
// left out, and an unknown
// subcommand of a command that only groups others (cobra would print the
// help and exit 0). A group called without a subcommand prints its help.
func usageErrors(c *cobra.Command) {
	if args := c.Args; args != nil {
		c.Args = func(cmd *cobra.Command, a []string) error {
			if err := args(cmd, a); err != nil {
				return usageError{fmt.Errorf("%s: %w (usage: %s)", strings.TrimPrefix(cmd.CommandPath(), cmd.Root().Name()+" "), err, cmd.UseLine())}
			}
			return nil
		}
	}
	if c.Runnable() && c.PreRunE == nil && c.PreRun == nil {
		// cobra checks required flags after PreRunE, with a plain error.
		c.PreRunE = func(cmd *cobra.Command, _ []string) error {
			if err := cmd.ValidateRequiredFlags(); err != nil {
				return usageError{err}
			}
			if err := cmd.ValidateFlagGroups(); err != nil {
				return usageError{err}
			}
			return nil
		}
	}
	if c.HasSubCommands() && c.Run == nil && c.RunE == nil {
		c.Args = cobra.ArbitraryArgs
		c.RunE = func(cmd *cobra.Command, a []string) error {
			if len(a) > 0 {
				return usageError{fmt.Errorf("unknown command %q for %q (see %s --help)", a[0], cmd.CommandPath(), cmd.CommandPath())}
			}
			return cmd.Help()
		}
	}
	for _, sub := range c.Commands() {
		usageErrors(sub)
	}
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
