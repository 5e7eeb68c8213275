package subjects

import "testing"

func TestRetrySubjects(t *testing.T) {
	for _, orig := range []string{"callbacks.event.crawl_status.1.2", "callbacks.notify.1.2"} {
		r, err := Retry(orig)
		if err != nil {
			t.Fatal(err)
		}
		back, err := OriginalFromRetry(r)
		if err != nil || back != orig {
			t.Errorf("OriginalFromRetry(%q) = %q, %v; want %q", r, back, err, orig)
		}
	}
	if r, _ := Retry("callbacks.event.crawl_status.1.2"); r != "callbacks.retry.event.crawl_status.1.2" {
		t.Errorf("Retry = %q", r)
	}
	if _, err := Retry("callbacks.dead.x.1.2"); err == nil {
		t.Error("Retry accepted a dead-letter subject")
	}
	for _, bad := range []string{"callbacks.retry.crawl_status.1.2", "callbacks.retry.", "callbacks.event.x.1.2", "callbacks.retry.dead.x.1.2"} {
		if got, err := OriginalFromRetry(bad); err == nil {
			t.Errorf("OriginalFromRetry(%q) = %q, want an error", bad, got)
		}
	}
	a, p, err := ParseNotify("callbacks.notify.12.34")
	if err != nil || a != "12" || p != "34" {
		t.Errorf("ParseNotify = %q %q %v", a, p, err)
	}
	for _, bad := range []string{"callbacks.notify.1", "callbacks.notify.01.2", "callbacks.notify.1.2.3", "callbacks.event.x.1.2"} {
		if _, _, err := ParseNotify(bad); err == nil {
			t.Errorf("ParseNotify(%q) accepted", bad)
		}
	}
}
