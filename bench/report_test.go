package main

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// drained is a scenario's result with its drain rates in round order.
func drained(name, against string, rates ...float64) result {
	return result{Name: name, Against: against, Floor: against == "", Backlog: phase{Rate: median(rates)}, BacklogRates: rates}
}

func TestPairRatios(t *testing.T) {
	tests := []struct {
		name    string
		results []result
		want    map[string][]float64
	}{
		{
			name: "each round against the floor's drain of the same round",
			results: []result{
				drained("floor", "", 100, 200, 400),
				drained("process", "floor", 70, 160, 200),
			},
			want: map[string][]float64{"floor": {1, 1, 1}, "process": {0.7, 0.8, 0.5}},
		},
		{
			name: "a scenario with its own floor",
			results: []result{
				drained("floor", "", 100),
				drained("floor-cap8", "", 50),
				drained("process-cap8", "floor-cap8", 40),
			},
			want: map[string][]float64{"floor": {1}, "floor-cap8": {0.5}, "process-cap8": {0.8}},
		},
		{
			name: "rounds the scenario missed are left out",
			results: []result{
				drained("floor", "", 100, 100, 100),
				drained("inprocess", "floor", 90),
			},
			want: map[string][]float64{"floor": {1, 1, 1}, "inprocess": {0.9}},
		},
		{
			name: "no floor, no ratios",
			results: []result{
				drained("inprocess", "floor", 90, 95),
			},
			want: map[string][]float64{"inprocess": nil},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := &report{Results: tc.results}
			r.pairRatios()
			got := map[string][]float64{}
			for _, x := range r.Results {
				got[x.Name] = x.RatiosToFloor
			}
			if diff := cmp.Diff(tc.want, got, cmpopts.EquateApprox(0, 1e-9), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("ratios (-want +got):\n%s", diff)
			}
		})
	}
}

func TestMedian(t *testing.T) {
	tests := []struct {
		xs   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{3}, 3},
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
	}
	for _, tc := range tests {
		if got := median(tc.xs); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.xs, got, tc.want)
		}
	}
}

// The throughput targets are judged on the median paired ratio, not on
// the ratio of the median rates.
func TestMarkdown_targets_use_the_paired_ratio(t *testing.T) {
	r := &report{Results: []result{
		drained("floor", "", 100, 200, 300),
		// Median rate 150 / floor's 200 would be 0.75; the paired ratios
		// are 0.6, 0.75, 0.5, median 0.6.
		drained("process", "floor", 60, 150, 150),
	}}
	r.pairRatios()
	md := r.Markdown()
	if want := "| default (built-ins in a process) ≥ 0.70 × floor deliveries/s | 0.60 | no |"; !strings.Contains(md, want) {
		t.Errorf("targets table lacks %q:\n%s", want, md)
	}
	if want := "| process | 150 | 0.60 | 0.50–0.75 |"; !strings.Contains(md, want) {
		t.Errorf("results table lacks %q:\n%s", want, md)
	}
}
