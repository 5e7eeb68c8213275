package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The sink is the webhook receiver every scenario delivers to: a process of
// its own (so its CPU is nobody's), answering 200 to every POST after
// parsing the form body, and recording each request's Callback-Delivery-Id
// and receive time. The driver reads the records over the same listener:
//
//	GET  /_count        "<distinct ids> <requests> <bad bodies>"
//	GET  /_count?path=P the same, of the requests to path P only
//	GET  /_dump?from=K  records K… as lines "<delivery id> <unix nanos>"
//	GET  /_conns        "<connections accepted>"
//	POST /_gate?hold=1  hold every answer from now on (hold=0: release)
//
// Holding the answers is how -hold makes a backlog: the system under test
// pulls what its in-flight limits allow and waits, the rest stays in the
// stream until the gate opens. (By default the driver holds nothing and
// times a drain from the last publish's acknowledgement.)
//
// Every scenario's target posts to a path of its own (scenario.HookPath),
// and the sink counts by path too: the targets of a run are all up at once,
// and each one's ledger counts only what reached its own path.
type sinkServer struct {
	mu       sync.Mutex
	ids      []string
	at       []int64
	distinct map[string]struct{}
	bad      int
	paths    map[string]*sinkTally // by request path
	gate     chan struct{}         // closed while answers flow
	conns    atomic.Int64          // connections accepted
}

// sinkTally is what the sink counted of the requests to one path.
type sinkTally struct{ distinct, requests, bad int }

// runSink serves until SIGTERM or SIGINT. It prints "listening <addr>" on
// stdout once it accepts connections.
func runSink(args []string) error {
	listen := "127.0.0.1:0"
	if len(args) > 0 {
		listen = args[0]
	}
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	s := &sinkServer{distinct: map[string]struct{}{}, paths: map[string]*sinkTally{}, gate: make(chan struct{})}
	close(s.gate)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /_gate", s.setGate)
	mux.HandleFunc("GET /_count", s.count)
	mux.HandleFunc("GET /_dump", s.dump)
	mux.HandleFunc("GET /_conns", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintf(w, "%d\n", s.conns.Load()) })
	mux.HandleFunc("POST /", s.receive)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		ConnState: func(_ net.Conn, st http.ConnState) {
			if st == http.StateNew {
				s.conns.Add(1)
			}
		}}
	fmt.Printf("listening %s\n", l.Addr())
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func (s *sinkServer) receive(w http.ResponseWriter, r *http.Request) {
	now := time.Now().UnixNano()
	ok := r.ParseForm() == nil && r.PostForm.Get("message") != ""
	id := r.Header.Get("Callback-Delivery-Id")
	s.mu.Lock()
	t := s.paths[r.URL.Path]
	if t == nil {
		t = &sinkTally{}
		s.paths[r.URL.Path] = t
	}
	if !ok || id == "" {
		s.bad++
		t.bad++
	} else {
		s.ids = append(s.ids, id)
		s.at = append(s.at, now)
		t.requests++
		if _, seen := s.distinct[id]; !seen {
			s.distinct[id] = struct{}{}
			t.distinct++
		}
	}
	gate := s.gate
	s.mu.Unlock()
	<-gate
	w.WriteHeader(http.StatusOK)
}

func (s *sinkServer) setGate(w http.ResponseWriter, r *http.Request) {
	hold := r.URL.Query().Get("hold") == "1"
	s.mu.Lock()
	select {
	case <-s.gate: // open
		if hold {
			s.gate = make(chan struct{})
		}
	default:
		if !hold {
			close(s.gate)
		}
	}
	s.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func (s *sinkServer) count(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	s.mu.Lock()
	d, n, bad := len(s.distinct), len(s.ids), s.bad
	if q.Has("path") {
		var t sinkTally
		if p := s.paths[q.Get("path")]; p != nil {
			t = *p
		}
		d, n, bad = t.distinct, t.requests, t.bad
	}
	s.mu.Unlock()
	fmt.Fprintf(w, "%d %d %d\n", d, n, bad)
}

func (s *sinkServer) dump(w http.ResponseWriter, r *http.Request) {
	from, _ := strconv.Atoi(r.URL.Query().Get("from"))
	s.mu.Lock()
	from = min(max(from, 0), len(s.ids))
	ids := append([]string(nil), s.ids[from:]...)
	at := append([]int64(nil), s.at[from:]...)
	s.mu.Unlock()
	bw := bufio.NewWriterSize(w, 64<<10)
	for i := range ids {
		bw.WriteString(ids[i])
		bw.WriteByte(' ')
		bw.WriteString(strconv.FormatInt(at[i], 10))
		bw.WriteByte('\n')
	}
	_ = bw.Flush()
}

// sinkClient is the driver's handle on the sink process.
type sinkClient struct {
	cmd  *exec.Cmd
	URL  string // base URL, e.g. http://127.0.0.1:41234
	http *http.Client
	next int // records read so far by Records
}

// sinkRecord is one request the sink received.
type sinkRecord struct {
	id string
	at int64 // unix nanos
}

func startSink(self string) (*sinkClient, error) {
	cmd := exec.Command(self, "sink")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("sink: %w", err)
	}
	addr := strings.TrimSpace(strings.TrimPrefix(line, "listening "))
	return &sinkClient{cmd: cmd, URL: "http://" + addr, http: &http.Client{Timeout: 30 * time.Second}}, nil
}

// Count returns how many distinct delivery ids and requests the sink has
// seen, and how many bodies it could not parse.
func (c *sinkClient) Count() (distinct, requests, bad int, err error) {
	return c.count(c.URL + "/_count")
}

// CountPath is Count of the requests to path only (a target's
// scenario.HookPath).
func (c *sinkClient) CountPath(path string) (distinct, requests, bad int, err error) {
	return c.count(c.URL + "/_count?path=" + url.QueryEscape(path))
}

func (c *sinkClient) count(u string) (distinct, requests, bad int, err error) {
	resp, err := c.http.Get(u)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("sink count: %w", err)
	}
	defer resp.Body.Close()
	_, err = fmt.Fscan(resp.Body, &distinct, &requests, &bad)
	return distinct, requests, bad, err
}

// Conns is how many connections the sink has accepted (the driver's own
// included: one client, kept alive).
func (c *sinkClient) Conns() (int, error) {
	resp, err := c.http.Get(c.URL + "/_conns")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var n int
	_, err = fmt.Fscan(resp.Body, &n)
	return n, err
}

// Hold makes the sink hold its answers (true) or release them (false).
func (c *sinkClient) Hold(hold bool) error {
	v := "0"
	if hold {
		v = "1"
	}
	resp, err := c.http.Post(c.URL+"/_gate?hold="+v, "", nil)
	if err != nil {
		return err
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("sink gate: %s", resp.Status)
	}
	return nil
}

// Records returns the records received since the previous call.
func (c *sinkClient) Records() ([]sinkRecord, error) {
	resp, err := c.http.Get(c.URL + "/_dump?from=" + strconv.Itoa(c.next))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var recs []sinkRecord
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		id, at, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			return nil, fmt.Errorf("sink dump: bad line %q", sc.Text())
		}
		n, err := strconv.ParseInt(at, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("sink dump: %w", err)
		}
		recs = append(recs, sinkRecord{id: id, at: n})
	}
	if err := sc.Err(); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	c.next += len(recs)
	return recs, nil
}

// CPU is the sink process's CPU seconds so far.
func (c *sinkClient) CPU() float64 { return treeCPU(c.cmd.Process.Pid) }

func (c *sinkClient) Close() {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = c.cmd.Process.Kill()
		<-done
	}
}
