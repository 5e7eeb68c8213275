package config

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Size is a number of bytes. Configuration writes it as a whole number of
// bytes ("1024") or a whole number followed by B, KiB, MiB or GiB ("256KiB");
// decimal units (KB, MB) are rejected rather than guessed at.
type Size int64

// Binary size units, as written after a number in configuration.
const (
	// KiB is 1024 bytes.
	KiB Size = 1 << 10
	// MiB is 1024 KiB.
	MiB Size = 1 << 20
	// GiB is 1024 MiB.
	GiB Size = 1 << 30
)

// sizeUnits is ordered largest first so String picks the largest exact unit.
var sizeUnits = []struct {
	name string
	mult Size
}{
	{"GiB", GiB},
	{"MiB", MiB},
	{"KiB", KiB},
	{"B", 1},
}

// ParseSize parses "256KiB", "1MiB", "1GiB", "512B" or "1024" (bytes).
// A space between the number and the unit is allowed.
func ParseSize(s string) (Size, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && '0' <= t[i] && t[i] <= '9' {
		i++
	}
	digits, unit := t[:i], strings.TrimSpace(t[i:])
	if digits == "" {
		return 0, fmt.Errorf("invalid size %q (want bytes or a whole number of B, KiB, MiB or GiB)", s)
	}
	mult := Size(0)
	if unit == "" {
		mult = 1
	}
	for _, u := range sizeUnits {
		if unit == u.name {
			mult = u.mult
		}
	}
	if mult == 0 {
		return 0, fmt.Errorf("invalid size %q: unknown unit %q (want B, KiB, MiB or GiB)", s, unit)
	}
	n, err := strconv.ParseInt(digits, 10, 64)
	if err != nil || Size(n) > Size(math.MaxInt64)/mult {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return Size(n) * mult, nil
}

// String formats s in the largest unit that divides it exactly, e.g.
// "256KiB", "1GiB" or "1000B"; ParseSize reads it back.
func (s Size) String() string {
	for _, u := range sizeUnits {
		if s != 0 && s%u.mult == 0 {
			return strconv.FormatInt(int64(s/u.mult), 10) + u.name
		}
	}
	return "0B"
}

// MarshalText implements encoding.TextMarshaler with String's format.
func (s Size) MarshalText() ([]byte, error) {
	return []byte(s.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler with ParseSize, which is
// how the koanf decoder turns "256KiB" into a Size.
func (s *Size) UnmarshalText(text []byte) error {
	v, err := ParseSize(string(text))
	if err != nil {
		return err
	}
	*s = v
	return nil
}
