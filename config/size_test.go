package config

import (
	"fmt"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in      string
		want    Size
		wantErr string
	}{
		{in: "256KiB", want: 262144},
		{in: "1MiB", want: 1 << 20},
		{in: "1GiB", want: 1 << 30},
		{in: "1024", want: 1024},
		{in: "512B", want: 512},
		{in: "0", want: 0},
		{in: " 2 MiB ", want: 2 << 20},
		{in: "9223372036854775807", want: 1<<63 - 1},
		{in: "", wantErr: "invalid size"},
		{in: "KiB", wantErr: "invalid size"},
		{in: "-1", wantErr: "invalid size"},
		{in: "+1", wantErr: "invalid size"},
		{in: "1.5MiB", wantErr: "unknown unit"},
		{in: "1KB", wantErr: `unknown unit "KB"`},
		{in: "1mib", wantErr: "unknown unit"},
		{in: "1 KiB B", wantErr: "unknown unit"},
		{in: "9223372036854775808", wantErr: "too large"},
		{in: "8589934592GiB", wantErr: "too large"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSize(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseSize(%q) = %d, %v; want error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestSize_String(t *testing.T) {
	tests := []struct {
		in   Size
		want string
	}{
		{0, "0B"},
		{1000, "1000B"},
		{1536, "1536B"},
		{262144, "256KiB"},
		{3 * MiB, "3MiB"},
		{GiB, "1GiB"},
		{2048 * GiB, "2048GiB"},
	}
	for _, tt := range tests {
		if got := tt.in.String(); got != tt.want {
			t.Errorf("Size(%d).String() = %q, want %q", int64(tt.in), got, tt.want)
		}
	}
}

func TestSize_text_round_trip(t *testing.T) {
	var s Size
	if err := s.UnmarshalText([]byte("64MiB")); err != nil || s != 64*MiB {
		t.Fatalf("UnmarshalText(64MiB) = %d, %v", s, err)
	}
	b, err := s.MarshalText()
	if err != nil || string(b) != "64MiB" {
		t.Fatalf("MarshalText() = %q, %v", b, err)
	}
	if err := s.UnmarshalText([]byte("lots")); err == nil || s != 64*MiB {
		t.Fatalf("UnmarshalText(lots) = %v and left %d; want an error and the old value", err, s)
	}
}

// FuzzParseSize checks that ParseSize never panics, never yields a negative
// size, and reads back what String writes.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"256KiB", "1MiB", "1GiB", "1024", "0B", "", "1.5MiB", "-1", "99999999999GiB"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err != nil {
			return
		}
		if n < 0 {
			t.Fatalf("ParseSize(%q) = %d, negative", s, n)
		}
		back, err := ParseSize(n.String())
		if err != nil || back != n {
			t.Fatalf("ParseSize(%q) = %d; ParseSize(%q) = %d, %v", s, n, n.String(), back, err)
		}
	})
}

func ExampleParseSize() {
	s, err := ParseSize("256KiB")
	fmt.Println(int64(s), s, err)
	// Output: 262144 256KiB <nil>
}
