package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/callbackd/callbackd/deliverylog"
	"github.com/callbackd/callbackd/plugins"
)

func newDeliveriesCmd() *cobra.Command {
	var (
		project, account, status, since string
		limit                           int
		follow, asJSON                  bool
	)
	cmd := &cobra.Command{
		Use:   "deliveries [--project P] [--account A] [--status S] [--since D] [--limit N] [--follow] [--json]",
		Short: "Show the delivery log: one line per attempt or outcome",
		Long: `Show the delivery log: one line per attempt or outcome, from CALLBACKS_LOG.

The newest --limit records that match are printed oldest first, so the newest
is at the bottom, where --follow goes on appending records as they arrive
(Ctrl-C stops). --status takes an outcome: ` + strings.Join(deliverylog.Outcomes, ", ") + `
(the GraphQL enum's spelling works too). --since takes a duration back from now
(30m, 2h, 7d) or an RFC 3339 time. --account and --project take a number or a
global ID. Records of events whose subject did not parse have no account or
project (empty in the table and the JSON); --account _ or --project _ selects
them. URLs are printed without userinfo or query; header values are never
logged.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := idFlags(&account, &project); err != nil {
				return err
			}
			f := deliverylog.Filter{AccountID: account, ProjectID: project}
			if status != "" {
				o, err := deliverylog.ParseOutcome(status)
				if err != nil {
					return usageError{fmt.Errorf("--status: %w", err)}
				}
				f.Outcome = o
			}
			if since != "" {
				t, err := parseWhen(since, time.Now())
				if err != nil {
					return usageError{fmt.Errorf("--since: %w", err)}
				}
				f.Since = t
			}
			if limit < 1 {
				return usageError{fmt.Errorf("--limit %d: want at least 1", limit)}
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
			return showDeliveries(cmd.Context(), cmd.OutOrStdout(), deliverylog.NewReader(js), f, limit, follow, asJSON)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&project, "project", "", "only this project ID (a number or a global ID; _ for none)")
	fl.StringVar(&account, "account", "", "only this account ID (a number or a global ID; _ for none)")
	fl.StringVar(&status, "status", "", "only this outcome (delivered, retrying, failed, skipped, no_destination, invalid, destination_not_allowed)")
	fl.StringVar(&since, "since", "", "only records since this long ago (1h, 7d) or this RFC 3339 time")
	fl.IntVar(&limit, "limit", deliverylog.DefaultFirst, "print at most this many of the newest records")
	fl.BoolVarP(&follow, "follow", "f", false, "keep printing new records as they arrive")
	fl.BoolVar(&asJSON, "json", false, "print one JSON record per line")
	return cmd
}

func showDeliveries(ctx context.Context, out io.Writer, r *deliverylog.Reader, f deliverylog.Filter, limit int, follow, asJSON bool) error {
	// The head is taken before the query so that records stored while it
	// runs are followed, not lost.
	var head string
	if follow {
		var err error
		if head, err = r.Head(ctx); err != nil {
			return err
		}
	}
	var newest []deliverylog.Entry // newest first
	for q := f; len(newest) < limit; {
		q.First = min(limit-len(newest), deliverylog.MaxFirst)
		p, err := r.Query(ctx, q)
		if err != nil {
			return err
		}
		newest = append(newest, p.Records...)
		if !p.HasNext {
			break
		}
		q.After = p.EndCursor
	}
	pr := newDeliveryPrinter(out, asJSON)
	for i := len(newest) - 1; i >= 0; i-- {
		pr.add(newest[i])
	}
	if err := pr.flush(); err != nil {
		return err
	}
	if !follow {
		return nil
	}
	f.After = head
	if len(newest) > 0 {
		if h, _ := deliverylog.ParseCursor(head); newest[0].Seq > h {
			f.After = newest[0].Cursor()
		}
	}
	var werr error
	err := r.Follow(ctx, f, func(e deliverylog.Entry) {
		pr.add(e)
		if err := pr.flush(); err != nil && werr == nil {
			werr = err
		}
	})
	if werr != nil {
		return werr
	}
	if errors.Is(err, context.Canceled) {
		return nil // Ctrl-C is how --follow ends
	}
	return err
}

// deliveryPrinter prints entries as a table or as JSON lines. The table's
// columns take their widths from the first block printed, so lines added
// by --follow line up with it.
type deliveryPrinter struct {
	out    io.Writer
	asJSON bool
	rows   [][]string
	widths []int
}

var deliveryColumns = []string{"TIME", "DELIVERY ID", "EVENT", "ACCOUNT", "PROJECT", "ATTEMPT", "STATUS", "OUTCOME", "DURATION", "URL", "ERROR"}

// minWidths keep --follow's lines aligned when the first block is empty or
// narrow.
var minWidths = []int{20, 16, 12, 7, 7, 7, 6, 9, 8, 24, 0}

func newDeliveryPrinter(out io.Writer, asJSON bool) *deliveryPrinter {
	return &deliveryPrinter{out: out, asJSON: asJSON}
}

func (p *deliveryPrinter) add(e deliverylog.Entry) {
	if e.URL != "" {
		e.URL = plugins.SafeURL(e.URL)
	}
	if p.asJSON {
		b, err := json.Marshal(e)
		if err == nil {
			p.rows = append(p.rows, []string{string(b)})
		}
		return
	}
	status := ""
	if e.StatusCode != 0 {
		status = strconv.Itoa(e.StatusCode)
	}
	dur := ""
	switch {
	case e.DurationMs != 0:
		dur = (time.Duration(e.DurationMs) * time.Millisecond).String()
	case !e.StartedAt.IsZero(): // an attempt that took less than 1 ms
		dur = "<1ms"
	}
	attempt := ""
	if e.Attempt != 0 {
		attempt = strconv.Itoa(e.Attempt)
	}
	p.rows = append(p.rows, []string{
		e.At.UTC().Format(time.RFC3339), e.DeliveryID, e.EventType, e.AccountID, e.ProjectID,
		attempt, status, e.Outcome, dur, e.URL, e.Error,
	})
}

func (p *deliveryPrinter) flush() error {
	rows := p.rows
	p.rows = p.rows[:0]
	if p.asJSON {
		for _, r := range rows {
			if _, err := fmt.Fprintln(p.out, r[0]); err != nil {
				return err
			}
		}
		return nil
	}
	for _, r := range rows {
		for i := range r {
			r[i] = cell(r[i], 120)
		}
	}
	tw := tabwriter.NewWriter(p.out, 0, 0, 2, ' ', 0)
	if p.widths == nil {
		p.widths = append([]int(nil), minWidths...)
		for _, r := range append([][]string{deliveryColumns}, rows...) {
			for i, c := range r {
				p.widths[i] = max(p.widths[i], utf8.RuneCountInString(c))
			}
		}
		p.writeRow(tw, deliveryColumns)
	}
	for _, r := range rows {
		p.writeRow(tw, r)
	}
	return tw.Flush()
}

func (p *deliveryPrinter) writeRow(tw io.Writer, r []string) {
	var b strings.Builder
	for i, c := range r {
		if i == len(r)-1 {
			b.WriteString(c)
			break
		}
		b.WriteString(c)
		b.WriteString(strings.Repeat(" ", max(0, p.widths[i]-utf8.RuneCountInString(c))))
		b.WriteByte('\t')
	}
	b.WriteByte('\n')
	_, _ = io.WriteString(tw, b.String())
}

// cell makes s one line without control characters, at most n runes.
func cell(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if utf8.RuneCountInString(s) > n {
		s = string([]rune(s)[:n-1]) + "…"
	}
	return s
}

// parseWhen reads a point in time as a duration back from now (90s, 2h,
// 7d) or an RFC 3339 time.
func parseWhen(s string, now time.Time) (time.Time, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		if n, err := strconv.Atoi(days); err == nil && n >= 0 {
			return now.AddDate(0, 0, -n), nil
		}
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("%q: want a duration back from now, not a negative one", s)
		}
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("%q: want a duration back from now (30m, 2h, 7d) or an RFC 3339 time (2026-01-02T15:04:05Z)", s)
}
