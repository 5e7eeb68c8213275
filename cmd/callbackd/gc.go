package main

// The GC settings of callbackd's two processes: serve, and the built-in
// plugin process. GOGC and GOMEMLIMIT in the environment win over both.

import (
	"log/slog"
	"os"
	"runtime/debug"
)

// GC settings of the built-in plugin process, unless GOGC or GOMEMLIMIT
// in its environment say otherwise. The process keeps no store and no
// queue: its live heap is a few MiB while every delivery makes garbage (a
// request, a response, the stream items), so at Go's default GOGC=100 it
// collected several times a second under load and GC took ~7 % of its CPU.
// At 400 it collects a quarter as often; the soft limit bounds what that
// costs in memory: in the 100,000-event backlog of make bench the process
// peaked at 53 MiB PSS with a 64 MiB limit, 38 MiB with 32 MiB. Below
// that the limit, not GOGC, sets the pace under load (256 requests in
// flight keep 10-15 MiB live): at 24 MiB the process spent 8-20 % more CPU
// per delivery than at 32 (4 interleaved A/B runs of the Go benchmark,
// session 4). 48 MiB drained the default mode's backlogs 5 % faster than
// 32 (median of 12 interleaved pairs of make bench drains in two orders,
// session 5; 64 MiB +3-4 %), for ~3 MiB more of the tree's peak PSS in
// the 100,000-event backlog (119-124 MiB, with serve at GOGC 50).
const (
	builtinGCPercent   = 400
	builtinMemoryLimit = 48 << 20
)

func tuneBuiltinGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(builtinGCPercent)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(builtinMemoryLimit)
	}
}

// serveGCPercent is serve's GOGC when its environment sets none: 50 when
// the built-ins run in their own process (the default), Go's 100 when
// they run in serve. ok is false when serve keeps Go's default.
//
// With the built-ins in a process, serve's heap is mostly nats-server's: a
// 4-8 MiB block buffer per stream being written or read, and the
// de-duplication window's message ids (~80 bytes each). That data is
// long-lived, and at GOGC=100 the heap grows to twice it: in the
// 100,000-event backlog of make bench, 35 MiB live made a 70 MiB heap, and
// the process tree peaked at 146-150 MiB PSS, at the target's edge. At 50
// it peaks at 120-135 MiB (with the built-in process at 48 MiB); at 60 at
// 136-139, at 75 at 131-146. The price is GC work in serve: nothing
// measurable while the de-dup window is small (6 interleaved rounds, 1.00 ×
// GOGC=100's rate), 3-7 % more CPU per delivery with 250,000 ids in it
// (two runs of 5 rounds). In-process, where serve also makes the encoding's
// and HTTP's garbage, GOGC 50 cost 5 % of the throughput, so that mode
// keeps Go's default.
func serveGCPercent(builtins, gogcEnv string) (percent int, ok bool) {
	if gogcEnv != "" || builtins != "process" {
		return 0, false
	}
	return serveProcessGCPercent, true
}

const serveProcessGCPercent = 50

// tuneServeGC applies serveGCPercent.
func tuneServeGC(builtins string, log *slog.Logger) {
	if p, ok := serveGCPercent(builtins, os.Getenv("GOGC")); ok {
		debug.SetGCPercent(p)
		log.Debug("GC tuned for the built-ins in a process (GOGC unset)", "gc_percent", p)
	}
}
