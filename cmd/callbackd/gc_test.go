package main

import "testing"

func TestServeGCPercent(t *testing.T) {
	tests := []struct {
		builtins, gogc string
		want           int
		wantOK         bool
	}{
		{"process", "", serveProcessGCPercent, true},
		{"process", "100", 0, false}, // the environment wins
		{"process", "off", 0, false},
		{"inprocess", "", 0, false}, // Go's default
		{"inprocess", "200", 0, false},
	}
	for _, tt := range tests {
		got, ok := serveGCPercent(tt.builtins, tt.gogc)
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("serveGCPercent(%q, GOGC=%q) = %d, %v; want %d, %v", tt.builtins, tt.gogc, got, ok, tt.want, tt.wantOK)
		}
	}
}
