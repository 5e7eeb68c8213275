package dispatcher

import (
	"strconv"
	"testing"
)

// A full table forgets its oldest settlements one by one, not all at once:
// past the cap, only the oldest messages are attempted again.
func TestSettlements_forget_the_oldest_first(t *testing.T) {
	var s settlements
	for i := range maxSettlements + 10 {
		s.put(strconv.Itoa(i), settlement{})
	}
	for i := range 10 {
		if _, ok := s.get(strconv.Itoa(i)); ok {
			t.Errorf("settlement %d kept past the cap", i)
		}
	}
	for _, i := range []int{10, maxSettlements, maxSettlements + 9} {
		if _, ok := s.get(strconv.Itoa(i)); !ok {
			t.Errorf("settlement %d forgotten", i)
		}
	}
	// Removed keys do not hold the order's memory for ever.
	for i := range 5 * maxSettlements {
		k := "r" + strconv.Itoa(i)
		s.put(k, settlement{})
		s.remove(k)
	}
	if len(s.order) > 2*maxSettlements+1 {
		t.Errorf("order holds %d keys for %d settlements", len(s.order), len(s.m))
	}
}

// The table says when it is empty without its lock, so that a delivery
// makes no key when there is nothing to look up.
func TestSettlements_empty(t *testing.T) {
	var s settlements
	if !s.empty() {
		t.Fatal("a new table is not empty")
	}
	s.put("a", settlement{})
	if s.empty() {
		t.Fatal("empty with a settlement kept")
	}
	s.remove("a")
	if !s.empty() {
		t.Fatal("not empty once its one settlement is removed")
	}
}
