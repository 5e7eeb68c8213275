package main

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// result is one scenario's measurements.
type result struct {
	Name string `json:"name"`
	// Floor is set for a floor's result; Against names the floor a
	// callbackd scenario is compared with ("" → "floor").
	Floor   bool   `json:"floor,omitempty"`
	Against string `json:"against,omitempty"`
	// Unavailable says why the scenario could not run (the example plugin
	// not built, for instance); nothing else is set then.
	Unavailable string `json:"unavailable,omitempty"`
	// Error is a failure of the scenario once it ran.
	Error string `json:"error,omitempty"`
	// Background is how many CPUs the machine kept busy in the second
	// before the scenario started (others' work: the box is shared).
	Background float64       `json:"background_cpus"`
	Ready      time.Duration `json:"ready"`
	// Backlog is the median of the backlog drains (by rate); their rates,
	// in round order (BacklogRates[k] is round k's), are in BacklogRates.
	// Parks and the longest gap are the worst of all drains.
	Backlog      phase     `json:"backlog"`
	BacklogRates []float64 `json:"backlog_rates"`
	// RatiosToFloor are the paired ratios to the floor, in round order:
	// for every round in which both the scenario and the floor drained,
	// the scenario's rate over the floor's (the floor's own are 1). The
	// drains of a round run one after another, so the machine's drift
	// falls alike on both sides of a ratio; their median is the scenario's
	// "× floor". Empty without a floor.
	RatiosToFloor []float64 `json:"ratios_to_floor"`
	Steady        phase     `json:"steady"`
	// Big is the 100,000-event backlog, default configuration only.
	Big    *phase `json:"big,omitempty"`
	Ledger ledger `json:"ledger"`
}

// ran reports whether the scenario has measurements.
func (r result) ran() bool { return r.Unavailable == "" && r.Backlog.Rate > 0 }

// machine describes where the benchmark ran.
type machine struct {
	NProc    int    `json:"nproc"`
	CPUModel string `json:"cpu_model"`
	Go       string `json:"go"`
	Commit   string `json:"commit"`
}

// report is a whole run.
type report struct {
	When     time.Time     `json:"when"`
	Machine  machine       `json:"machine"`
	N        int           `json:"backlog_events"`
	Big      int           `json:"big_backlog_events"`
	Rate     int           `json:"steady_rate"`
	Steady   time.Duration `json:"steady_duration"`
	Took     time.Duration `json:"took"`
	Results  []result      `json:"results"`
	FloorCfg string        `json:"floor"`
	Void     bool          `json:"void"`
}

// floor is the main floor's result (64 in flight), nil when it did not run.
func (r *report) floor() *result { return r.find("floor") }

// floorFor is the floor x is compared with: its Against, else the main
// floor; nil when that did not run.
func (r *report) floorFor(x result) *result { return r.find(cmp.Or(x.Against, "floor")) }

// pairRatios sets every scenario's RatiosToFloor from its drain rates and
// the floor's of the same rounds.
func (r *report) pairRatios() {
	for i := range r.Results {
		x := &r.Results[i]
		fl := r.floorFor(*x)
		if !x.ran() || fl == nil {
			continue
		}
		floorRates := fl.BacklogRates
		x.RatiosToFloor = nil
		for k := range min(len(x.BacklogRates), len(floorRates)) {
			if floorRates[k] > 0 {
				x.RatiosToFloor = append(x.RatiosToFloor, x.BacklogRates[k]/floorRates[k])
			}
		}
	}
}

// ratioToFloor is the median of x's paired ratios to the floor; ok is
// false when there are none (no floor, or x did not drain).
func (x result) ratioToFloor() (q float64, ok bool) {
	if len(x.RatiosToFloor) == 0 {
		return 0, false
	}
	return median(x.RatiosToFloor), true
}

// median is the middle value of xs, or the mean of the two middle ones
// for an even count; 0 for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func (r *report) find(name string) *result {
	for i := range r.Results {
		if r.Results[i].Name == name && r.Results[i].ran() {
			return &r.Results[i]
		}
	}
	return nil
}

func mib(b int64) string { return fmt.Sprintf("%.0f", float64(b)/(1<<20)) }

func ms(d time.Duration) string {
	if d <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond))
}

func ratio(x, floor float64) string {
	if floor <= 0 || x <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", x/floor)
}

// rateRange is "lowest–highest" of the drains' rates, "" for a single one.
func rateRange(rates []float64) string {
	if len(rates) < 2 {
		return ""
	}
	return fmt.Sprintf("%.0f–%.0f", slices.Min(rates), slices.Max(rates))
}

// pairedRatio is the median of x's paired ratios to the floor, "–" without.
func pairedRatio(x result) string {
	q, ok := x.ratioToFloor()
	if !ok {
		return "–"
	}
	return fmt.Sprintf("%.2f", q)
}

// pairedRange is "lowest–highest" of x's paired ratios to the floor, ""
// for a single one, "–" without.
func pairedRange(x result) string {
	switch len(x.RatiosToFloor) {
	case 0:
		return "–"
	case 1:
		return ""
	}
	return fmt.Sprintf("%.2f–%.2f", slices.Min(x.RatiosToFloor), slices.Max(x.RatiosToFloor))
}

// Markdown renders the run as the table README.md shows.
func (r *report) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Run %s on %d × %s (`nproc` %d), %s, commit %s; took %s.\n",
		r.When.UTC().Format("2006-01-02 15:04 UTC"), r.Machine.NProc, r.Machine.CPUModel, r.Machine.NProc,
		r.Machine.Go, r.Machine.Commit, r.Took.Round(time.Second))
	fmt.Fprintf(&b, "Backlog %d events; steady %d events/s for %s; floor: %s.\n\n", r.N, r.Rate, r.Steady, r.FloorCfg)
	if r.Void {
		b.WriteString("**VOID RUN: a ledger did not balance (see the ledger column).**\n\n")
	}
	b.WriteString("| scenario | backlog deliveries/s (median) | × floor (median of rounds) | × floor, per round: lowest–highest | drains: lowest–highest /s | steady p50 ms | p99 ms | p99.9 ms | max ms | ready s | ledger: published = delivered+dead+skipped+no_dest |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, x := range r.Results {
		if x.Unavailable != "" {
			fmt.Fprintf(&b, "| %s | unavailable: %s ||||||||||\n", x.Name, oneLine(x.Unavailable))
			continue
		}
		ready := fmt.Sprintf("%.2f", x.Ready.Seconds())
		if x.Floor {
			ready += " ¹"
		}
		led := x.Ledger.String()
		if !x.Ledger.OK() {
			led = "**VOID** " + led
		}
		if x.Ledger.Duplicates > 0 {
			led += fmt.Sprintf(" (%d duplicates)", x.Ledger.Duplicates)
		}
		if x.Error != "" {
			led += " — error: " + oneLine(x.Error)
		}
		fmt.Fprintf(&b, "| %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
			x.Name, x.Backlog.Rate, pairedRatio(x), pairedRange(x), rateRange(x.BacklogRates),
			ms(x.Steady.P50), ms(x.Steady.P99), ms(x.Steady.P999), ms(x.Steady.Max), ready, led)
	}
	b.WriteString("\n| scenario | CPU s / 10k, backlog | × floor | CPU s / 10k, steady | × floor | peak RSS MiB | peak PSS MiB | parks | sink connections opened, backlog | longest arrival gap, backlog ms | machine CPUs busy, backlog | background CPUs before start |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, x := range r.Results {
		if x.Unavailable != "" {
			continue
		}
		var floorCPU, floorSteadyCPU float64
		if fl := r.floorFor(x); fl != nil {
			floorCPU, floorSteadyCPU = fl.Backlog.CPUPer10k(), fl.Steady.CPUPer10k()
		}
		peakRSS, peakPSS := max(x.Backlog.PeakRSS, x.Steady.PeakRSS), max(x.Backlog.PeakPSS, x.Steady.PeakPSS)
		fmt.Fprintf(&b, "| %s | %.2f | %s | %.2f | %s | %s | %s | %d | %d | %s | %.2f | %.2f |\n",
			x.Name, x.Backlog.CPUPer10k(), ratio(x.Backlog.CPUPer10k(), floorCPU),
			x.Steady.CPUPer10k(), ratio(x.Steady.CPUPer10k(), floorSteadyCPU),
			mib(peakRSS), mib(peakPSS), x.Backlog.Parks+x.Steady.Parks, x.Backlog.Conns, ms(x.Backlog.MaxGap),
			x.Backlog.MachineBusy, x.Background)
	}
	b.WriteString("\n¹ the floor's \"ready\" is its own start (nats-server, stream, consumer), for comparison only.\n")
	for _, x := range r.Results {
		if x.Against != "" && x.Against != "floor" {
			fmt.Fprintf(&b, "\n%s is compared with %s (the same requests in flight), in both tables; every other row with floor.\n", x.Name, x.Against)
		}
	}
	for _, x := range r.Results {
		if x.Big != nil {
			fmt.Fprintf(&b, "\n%s, %d-event backlog: %.0f deliveries/s, peak RSS %s MiB, **peak PSS %s MiB**, CPU %.2f s / 10k, %d parks.\n",
				x.Name, x.Big.N, x.Big.Rate, mib(x.Big.PeakRSS), mib(x.Big.PeakPSS), x.Big.CPUPer10k(), x.Big.Parks)
		}
	}

	b.WriteString("\n| target (issue 7) | measured | met |\n|---|---|---|\n")
	target := func(name, measured string, met, known bool) {
		m := "no"
		switch {
		case !known:
			m, measured = "not measured", "–"
		case met:
			m = "yes"
		}
		fmt.Fprintf(&b, "| %s | %s | %s |\n", name, measured, m)
	}
	// The throughput targets take the median of the paired ratios (rounds
	// in which both drained).
	def, inp := r.find("process"), r.find("inprocess")
	for _, t := range []struct {
		x    *result
		name string
		min  float64
	}{
		{def, "default (built-ins in a process) ≥ 0.70 × floor deliveries/s", 0.70},
		{inp, "inprocess ≥ 0.90 × floor deliveries/s", 0.90},
	} {
		if t.x != nil {
			if q, ok := t.x.ratioToFloor(); ok {
				target(t.name, fmt.Sprintf("%.2f", q), q >= t.min, true)
				continue
			}
		}
		target(t.name, "", false, false)
	}
	// The latency targets hold for every callbackd configuration the
	// issue names: process-cap8 is the true default (8 requests in flight
	// per host), not only the per-host cap lifted.
	for _, x := range []*result{def, r.find("process-cap8"), inp} {
		if x == nil {
			continue
		}
		target(x.Name+": steady p99 ≤ 10 ms", ms(x.Steady.P99)+" ms", x.Steady.P99 > 0 && x.Steady.P99 <= 10*time.Millisecond, x.Steady.P99 > 0)
		target(x.Name+": steady p99.9 ≤ 50 ms", ms(x.Steady.P999)+" ms", x.Steady.P999 > 0 && x.Steady.P999 <= 50*time.Millisecond, x.Steady.P999 > 0)
	}
	if def != nil && def.Big != nil {
		target(fmt.Sprintf("default: peak PSS ≤ 150 MiB during a %d-event backlog", def.Big.N), mib(def.Big.PeakPSS)+" MiB",
			def.Big.PeakPSS <= 150<<20, def.Big.PeakPSS > 0)
	} else {
		target("default: peak PSS ≤ 150 MiB during a 100,000-event backlog", "", false, false)
	}
	if def != nil {
		target("default: serve → /readyz 200 ≤ 1 s (empty data dir)", fmt.Sprintf("%.2f s", def.Ready.Seconds()), def.Ready <= time.Second, def.Ready > 0)
	}
	return b.String()
}

func oneLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return strings.ReplaceAll(s, "|", "\\|")
}

// write saves <base>.md, <base>.json and <base>.png.
func (r *report) write(base string) error {
	if err := os.MkdirAll(filepath.Dir(base), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(base+".md", []byte(r.Markdown()), 0o644); err != nil {
		return err
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(base+".json", append(js, '\n'), 0o644); err != nil {
		return err
	}
	return r.chart(base + ".png")
}

// chart draws throughput and steady latency by scenario.
func (r *report) chart(path string) error {
	var names []string
	var rates plotter.Values
	var ratios []string // each bar's paired ratio to the floor
	var p50, p99, p999 plotter.Values
	for _, x := range r.Results {
		if !x.ran() {
			continue
		}
		names = append(names, x.Name)
		rates = append(rates, x.Backlog.Rate)
		if q, ok := x.ratioToFloor(); ok {
			ratios = append(ratios, fmt.Sprintf("  ×%.2f", q))
		} else {
			ratios = append(ratios, "")
		}
		p50 = append(p50, x.Steady.P50.Seconds()*1000)
		p99 = append(p99, x.Steady.P99.Seconds()*1000)
		p999 = append(p999, x.Steady.P999.Seconds()*1000)
	}
	if len(names) == 0 {
		return nil
	}
	title := fmt.Sprintf("nproc %d, %s", r.Machine.NProc, r.Machine.CPUModel)

	tp := plot.New()
	tp.Title.Text = "Backlog drain (" + title + ")"
	tp.Y.Label.Text = "deliveries/s"
	bars, err := plotter.NewBarChart(rates, vg.Points(28))
	if err != nil {
		return err
	}
	bars.Color = color.RGBA{R: 0x33, G: 0x66, B: 0xcc, A: 0xff}
	bars.LineStyle.Width = 0
	tp.Add(plotter.NewGrid(), bars)
	// Each bar's median paired ratio to the floor, above it.
	if fl := r.floor(); fl != nil {
		xys := make(plotter.XYs, len(rates))
		texts := make([]string, len(rates))
		for i, v := range rates {
			xys[i] = plotter.XY{X: float64(i), Y: v}
			texts[i] = fmt.Sprintf("%.0f/s%s", v, ratios[i])
		}
		labels, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: texts})
		if err != nil {
			return err
		}
		for i := range labels.TextStyle {
			labels.TextStyle[i].XAlign = draw.XCenter
			labels.TextStyle[i].YAlign = draw.YBottom
		}
		tp.Add(labels)
	}
	tp.NominalX(names...)
	tp.Y.Min = 0
	tp.Y.Max = maxOf(rates) * 1.12

	lp := plot.New()
	lp.Add(plotter.NewGrid())
	lp.Title.Text = fmt.Sprintf("Steady %d events/s: publish → receive", r.Rate)
	lp.Y.Label.Text = "latency, ms"
	w := vg.Points(14)
	colors := []color.Color{
		color.RGBA{R: 0x66, G: 0xaa, B: 0x55, A: 0xff},
		color.RGBA{R: 0xee, G: 0x99, B: 0x22, A: 0xff},
		color.RGBA{R: 0xcc, G: 0x33, B: 0x33, A: 0xff},
	}
	for i, s := range []struct {
		name string
		v    plotter.Values
	}{{"p50", p50}, {"p99", p99}, {"p99.9", p999}} {
		b, err := plotter.NewBarChart(s.v, w)
		if err != nil {
			return err
		}
		b.Color = colors[i]
		b.LineStyle.Width = 0
		b.Offset = w * vg.Length(i-1)
		lp.Add(b)
		lp.Legend.Add(s.name, b)
	}
	lp.Legend.Top = true
	lp.Legend.Left = true
	lp.NominalX(names...)
	lp.Y.Min = 0
	lp.Y.Max = max(maxOf(p999), maxOf(p99)) * 1.25

	img := vgimg.New(vg.Points(900), vg.Points(360))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Points(20), PadTop: vg.Points(6), PadBottom: vg.Points(6), PadLeft: vg.Points(6), PadRight: vg.Points(6)}
	cs := plot.Align([][]*plot.Plot{{tp, lp}}, tiles, dc)
	tp.Draw(cs[0][0])
	lp.Draw(cs[0][1])
	var buf bytes.Buffer
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(&buf); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

func maxOf(v plotter.Values) float64 {
	var m float64
	for _, x := range v {
		m = max(m, x)
	}
	return m
}
