package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/callbackd/callbackd/deadletters"
	"github.com/callbackd/callbackd/subjects"
)

func newReplayCmd() *cobra.Command {
	var (
		f            deadletters.Filter
		since, until string
		yes          bool
	)
	cmd := &cobra.Command{
		Use:   "replay [--account A] [--project P] [--event-type T] [--reason R] [--since D] [--until D] [--dry-run] [--yes]",
		Short: "Send dead letters back to their original subjects for delivery",
		Long: `Send the dead letters of CALLBACKS_DEAD that match back to their original
subjects (Callbackd-Subject) for delivery, with their original delivery id, and
delete each one once its new copy is stored. Interrupting it is safe, and so is
running it again: a replay that stops part-way (Ctrl-C, NATS going away) prints
how many it replayed, then the error, and exits non-zero; the letters it did not
replay are still dead letters, for the next run.

--reason is one of invalid_event, delivery_failed, destination_not_allowed,
callback_failed_undeliverable. --event-type ` + subjects.DeadInvalidType + ` selects events whose subject did
not parse. --since and --until take a duration back from now (30m, 2h, 7d) or
an RFC 3339 time, and bound when the events were dead-lettered (on the NATS
server's clock). Without --yes it asks before replaying; letters that die
between the question and the replay are replayed too, and events that fail
again during the replay are left for another run.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := idFlags(&f.AccountID, &f.ProjectID); err != nil {
				return err
			}
			now := time.Now()
			if since != "" {
				t, err := parseWhen(since, now)
				if err != nil {
					return usageError{fmt.Errorf("--since: %w", err)}
				}
				f.Since = t
			}
			if until != "" {
				t, err := parseWhen(until, now)
				if err != nil {
					return usageError{fmt.Errorf("--until: %w", err)}
				}
				f.Until = t
			}
			if err := f.Validate(); err != nil {
				return usageError{err}
			}
			cfg, log, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			nc, err := dialNATS(cfg, log)
			if err != nil {
				return err
			}
			defer nc.Close()
			js, err := jetstream.New(nc)
			if err != nil {
				return fmt.Errorf("jetstream: %w", err)
			}
			return replay(cmd, js, f, yes)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.AccountID, "account", "", "only this account ID (a number or a global ID)")
	fl.StringVar(&f.ProjectID, "project", "", "only this project ID (a number or a global ID)")
	fl.StringVar(&f.EventType, "event-type", "", "only this event type ("+subjects.DeadInvalidType+": events whose subject did not parse)")
	fl.StringVar(&f.Reason, "reason", "", "only this Callbackd-Reason")
	fl.StringVar(&since, "since", "", "only dead letters since this long ago (1h, 7d) or this RFC 3339 time")
	fl.StringVar(&until, "until", "", "only dead letters until this long ago or this RFC 3339 time")
	fl.BoolVar(&f.DryRun, "dry-run", false, "count what would be replayed; change nothing")
	fl.BoolVarP(&yes, "yes", "y", false, "replay without asking")
	return cmd
}

func replay(cmd *cobra.Command, js jetstream.JetStream, f deadletters.Filter, yes bool) error {
	ctx, out, errOut := cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr()
	count := f
	count.DryRun = true
	res, err := deadletters.Replay(ctx, js, count, nil)
	if err != nil {
		return err
	}
	if f.DryRun || res.Matched == 0 {
		_, err := fmt.Fprintln(out, summary(res, f.DryRun))
		return err
	}
	if !yes {
		letters := "dead letters"
		if res.Matched == 1 {
			letters = "dead letter"
		}
		fmt.Fprintf(errOut, "replay %d %s to their original subjects? [y/N] ", res.Matched, letters)
		if !confirmed(cmd.InOrStdin()) {
			return errors.New("replay not confirmed; nothing changed (--yes skips the question)")
		}
	}
	p := newProgress(errOut, res.Matched)
	res, err = deadletters.Replay(ctx, js, f, p.set)
	p.end(err == nil)
	if _, perr := fmt.Fprintln(out, replaySummary(res, err)); perr != nil && err == nil {
		err = perr
	}
	if err != nil {
		return fmt.Errorf("replay stopped after %d of %d (run it again to go on): %w", res.Replayed, res.Matched, err)
	}
	return nil
}

// replaySummary is summary after a replay that ended with err: one that
// went through every letter also says how many it found gone (another
// replay took them, or they expired), since its progress bar counts
// letters gone through, not replayed.
func replaySummary(res deadletters.Result, err error) string {
	line := summary(res, false)
	if gone := res.Matched - res.Replayed - res.Skipped; err == nil && gone > 0 {
		line += fmt.Sprintf(", %d gone before their turn (replayed by another run, or expired)", gone)
	}
	return line
}

func summary(res deadletters.Result, dryRun bool) string {
	s := fmt.Sprintf("matched %d, replayed %d", res.Matched, res.Replayed)
	if dryRun {
		s += " (dry run)"
	}
	if res.Skipped > 0 {
		s += fmt.Sprintf(", skipped %d with no event or notice subject to go back to (Callbackd-Subject missing or outside CALLBACKS)", res.Skipped)
	}
	return s
}

func confirmed(in io.Reader) bool {
	line, _ := bufio.NewReader(in).ReadString('\n')
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return true
	}
	return false
}

// progressLabel says what a replay's progress counts.
const progressLabel = "going through the dead letters"

// progress shows how far a replay has gone: a bar redrawn in place on a
// terminal, else a line every progressEvery (a log or a pipe keeps no
// redraws).
type progress struct {
	bar  *progressbar.ProgressBar // nil when w is not a terminal
	w    io.Writer
	last time.Time
	done int
	max  int
}

const progressEvery = 2 * time.Second

func newProgress(w io.Writer, total int) *progress {
	p := &progress{w: w, max: total, last: time.Now()}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.bar = progressbar.NewOptions(total,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription(progressLabel),
			progressbar.OptionShowCount(),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionOnCompletion(func() { fmt.Fprintln(w) }),
		)
	}
	return p
}

func (p *progress) set(done, total int) {
	p.done, p.max = done, total
	if p.bar != nil {
		if total != p.bar.GetMax() {
			p.bar.ChangeMax(total)
		}
		_ = p.bar.Set(done)
		return
	}
	if now := time.Now(); now.Sub(p.last) >= progressEvery {
		p.last = now
		fmt.Fprintf(p.w, "%s: %d/%d\n", progressLabel, done, total)
	}
}

// end finishes the bar, or prints the last count.
func (p *progress) end(ok bool) {
	switch {
	case p.bar != nil && ok:
		_ = p.bar.Finish()
	case p.bar != nil:
		fmt.Fprintln(p.w)
	default:
		fmt.Fprintf(p.w, "%s: %d/%d\n", progressLabel, p.done, p.max)
	}
}
