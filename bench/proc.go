package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// clockTicks is USER_HZ, the unit of utime/stime in /proc/<pid>/stat: 100
// on every Linux architecture Go supports.
const clockTicks = 100

// procStat is what the benchmark reads of /proc/<pid>/stat.
type procStat struct {
	ppid int
	// cpu is utime+stime of the process and cutime+cstime of its children
	// that have been waited for, in seconds.
	cpu float64
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state): field n is f[n-3].
	if len(f) < 15 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	ppid, _ := strconv.Atoi(f[1])
	var ticks int64
	for _, n := range []int{14, 15, 16, 17} {
		v, _ := strconv.ParseInt(f[n-3], 10, 64)
		ticks += v
	}
	return procStat{ppid: ppid, cpu: float64(ticks) / clockTicks}, nil
}

// tree returns root and its live descendants.
func tree(root int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return []int{root}
	}
	children := map[int][]int{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readStat(pid)
		if err != nil {
			continue
		}
		children[st.ppid] = append(children[st.ppid], pid)
	}
	out := []int{root}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

// treeCPU is the CPU seconds used so far by root's process tree: every live
// process, and the children each has waited for.
func treeCPU(root int) float64 {
	var sum float64
	for _, pid := range tree(root) {
		if st, err := readStat(pid); err == nil {
			sum += st.cpu
		}
	}
	return sum
}

// memory is the resident (RSS) and proportional (PSS) set size of a tree,
// in bytes. PSS counts a page shared by n processes 1/n in each, so the sum
// over a tree counts the shared text of a re-executed binary once.
type memory struct{ rss, pss int64 }

func readRollup(pid int) (memory, error) {
	f, err := os.Open(filepath.Join("/proc", strconv.Itoa(pid), "smaps_rollup"))
	if err != nil {
		return memory{}, err
	}
	defer f.Close()
	var m memory
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		var dst *int64
		switch {
		case strings.HasPrefix(line, "Rss:"):
			dst = &m.rss
		case strings.HasPrefix(line, "Pss:"):
			dst = &m.pss
		default:
			continue
		}
		fs := strings.Fields(line)
		if len(fs) >= 2 {
			kb, _ := strconv.ParseInt(fs[1], 10, 64)
			*dst = kb << 10
		}
	}
	return m, sc.Err()
}

func treeMemory(root int) memory {
	var sum memory
	for _, pid := range tree(root) {
		if m, err := readRollup(pid); err == nil {
			sum.rss += m.rss
			sum.pss += m.pss
		}
	}
	return sum
}

// sample is one reading of a process tree's memory.
type sample struct {
	at time.Time
	memory
}

// sampler reads a process tree's memory every interval until stopped.
type sampler struct {
	root int
	// on is set while the target runs a measured phase: reading
	// smaps_rollup walks each process's page tables in the kernel, and
	// with every target of a run up at once the idle ones' samplers (ten
	// readings a second of one to three processes each) took CPU from the
	// one under test.
	on   atomic.Bool
	mu   sync.Mutex
	all  []sample
	stop chan struct{}
	done chan struct{}
}

// measuring turns sampling on (for a measured phase) or off.
func (s *sampler) measuring(on bool) { s.on.Store(on) }

func startSampler(root int, every time.Duration) *sampler {
	s := &sampler{root: root, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			if s.on.Load() {
				m := treeMemory(root)
				s.mu.Lock()
				s.all = append(s.all, sample{at: time.Now(), memory: m})
				s.mu.Unlock()
			}
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// Stop stops sampling.
func (s *sampler) Stop() {
	close(s.stop)
	<-s.done
}

// peak is the largest RSS and PSS sampled from 'from' to 'to'.
func (s *sampler) peak(from, to time.Time) memory {
	s.mu.Lock()
	defer s.mu.Unlock()
	var p memory
	for _, x := range s.all {
		if x.at.Before(from) || x.at.After(to) {
			continue
		}
		p.rss = max(p.rss, x.rss)
		p.pss = max(p.pss, x.pss)
	}
	return p
}

// machineCPU returns the busy and total CPU seconds of the whole machine so
// far, from /proc/stat (all CPUs).
func machineCPU() (busy, total float64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0
	}
	for i, x := range f[1:] {
		v, _ := strconv.ParseFloat(x, 64)
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy / clockTicks, total / clockTicks
}
