package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The floor is the least a webhook dispatcher on JetStream can do, with no
// callbackd code: the same embedded nats-server (file store, in-process
// client connection) in its own process, a work-queue stream and a durable
// pull consumer, a minimal encoder (decode the JSON, form-encode the fields
// in order), one keep-alive net/http client, and an ack after a 2xx. It
// runs as a process of its own, like callbackd, so that the two are
// measured the same way (process-tree CPU and memory).

// floorEvent is the crawl_status payload, as the floor decodes it.
type floorEvent struct {
	CrawlID          json.Number     `json:"crawl_id"`
	UserID           json.RawMessage `json:"user_id"`
	PartnerAccountID json.RawMessage `json:"partner_account_id"`
	PartnerUserID    json.RawMessage `json:"partner_user_id"`
}

// runFloor serves until SIGTERM. It prints "ready" on stdout once the
// stream and consumer exist and it is consuming.
func runFloor(args []string) error {
	fs := flag.NewFlagSet("floor", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "NATS client listener (for the driver)")
	store := fs.String("store", "", "JetStream store directory")
	sink := fs.String("sink", "", "URL to POST to")
	workers := fs.Int("workers", 64, "messages handled at once (pull-ahead and HTTP requests in flight)")
	maxAckPending := fs.Int("max-ack-pending", 0, "consumer MaxAckPending (0: 4 × workers, as callbackd)")
	pull := fs.String("pull", "fetch", "how to pull: fetch (two Fetch loops) or messages (one Messages iterator)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	host, portText, err := net.SplitHostPort(*listen)
	if err != nil {
		return err
	}
	port, _ := strconv.Atoi(portText)
	ns, nc, err := startFloorServer(host, port, *store)
	if err != nil {
		return err
	}
	defer func() { nc.Close(); ns.Shutdown(); ns.WaitForShutdown() }()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	cons, err := floorConsumer(ctx, js, cmp.Or(*maxAckPending, 4**workers))
	if err != nil {
		return err
	}
	fmt.Println("ready")
	return consumeFloor(ctx, cons, *sink, *workers, *pull)
}

// startFloorServer starts the floor's nats-server (JetStream, file store
// in store, clients on host:port) and connects to it in-process. Close the
// connection, then shut the server down.
func startFloorServer(host string, port int, store string) (*server.Server, *nats.Conn, error) {
	ns, err := server.NewServer(&server.Options{
		ServerName: "floor", Host: host, Port: port,
		JetStream: true, StoreDir: store, NoSigs: true, NoLog: true,
	})
	if err != nil {
		return nil, nil, err
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil, nil, errors.New("floor: nats-server not ready")
	}
	nc, err := nats.Connect("", nats.InProcessServer(ns))
	if err != nil {
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil, nil, err
	}
	return ns, nc, nil
}

// floorConsumer makes the floor's stream, CALLBACKS (work queue, file
// storage, 2-minute de-duplication), and its durable pull consumer.
func floorConsumer(ctx context.Context, js jetstream.JetStream, maxAckPending int) (jetstream.Consumer, error) {
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: "CALLBACKS", Subjects: []string{"callbacks.event.>"},
		Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage,
		Duplicates: 2 * time.Minute,
	})
	if err != nil {
		return nil, err
	}
	return st.CreateConsumer(ctx, jetstream.ConsumerConfig{
		Durable: "dispatcher", AckPolicy: jetstream.AckExplicitPolicy,
		AckWait: 40 * time.Second, MaxAckPending: maxAckPending,
	})
}

// consumeFloor is the floor's loop: it pulls from cons and delivers to sink
// with workers requests in flight until ctx ends. pull is "fetch" (two
// Fetch loops) or "messages" (a Messages iterator).
func consumeFloor(ctx context.Context, cons jetstream.Consumer, sink string, workers int, pull string) error {
	client := &http.Client{Transport: &http.Transport{
		MaxIdleConnsPerHost: workers, IdleConnTimeout: 90 * time.Second, DisableCompression: true,
	}}
	defer client.CloseIdleConnections()
	work := make(chan jetstream.Msg, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			var body bytes.Buffer
			for m := range work {
				floorDeliver(client, sink, m, &body)
			}
		})
	}
	defer func() {
		close(work)
		wg.Wait()
	}()
	if pull == "messages" {
		it, err := cons.Messages(jetstream.PullMaxMessages(workers))
		if err != nil {
			return err
		}
		stopIt := context.AfterFunc(ctx, it.Stop)
		defer stopIt()
		for {
			m, err := it.Next()
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil
			}
			if err == nil {
				work <- m
			}
		}
	}
	var fetchers sync.WaitGroup
	for range 2 {
		fetchers.Go(func() {
			for ctx.Err() == nil {
				batch, err := cons.Fetch(workers, jetstream.FetchMaxWait(time.Second))
				if err != nil {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				for m := range batch.Messages() {
					work <- m
				}
			}
		})
	}
	fetchers.Wait()
	return nil
}

func floorDeliver(client *http.Client, sink string, m jetstream.Msg, body *bytes.Buffer) {
	var ev floorEvent
	dec := json.NewDecoder(bytes.NewReader(m.Data()))
	dec.UseNumber()
	if err := dec.Decode(&ev); err != nil {
		_ = m.Term()
		return
	}
	// callbacks.event.<type>.<account>.<project>
	tok := strings.Split(m.Subject(), ".")
	if len(tok) != 5 {
		_ = m.Term()
		return
	}
	account, project := tok[3], tok[4]
	body.Reset()
	field := func(k, v string) {
		if body.Len() > 0 {
			body.WriteByte('&')
		}
		body.WriteString(k)
		body.WriteByte('=')
		body.WriteString(url.QueryEscape(v))
	}
	field("message", "crawl_status")
	field("resource", "crawl")
	field("crawl_id", ev.CrawlID.String())
	field("project_id", project)
	field("account_id", account)
	field("user_id", jsonScalar(ev.UserID))
	field("partner_account_id", jsonScalar(ev.PartnerAccountID))
	field("partner_user_id", jsonScalar(ev.PartnerUserID))
	field("status", "finished")
	field("href", "/accounts/"+account+"/projects/"+project+"/crawls/"+ev.CrawlID.String())

	req, _ := http.NewRequest(http.MethodPost, sink, bytes.NewReader(body.Bytes()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("User-Agent", "floor")
	req.Header.Set("Callback-Delivery-Id", deliveryID(m.Headers().Get("Nats-Msg-Id")))
	resp, err := client.Do(req)
	if err != nil {
		_ = m.NakWithDelay(time.Second)
		return
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 204 {
		_ = m.NakWithDelay(time.Second)
		return
	}
	_ = m.Ack()
}

// jsonScalar renders an integer or string ID; null and absent are "".
func jsonScalar(raw json.RawMessage) string {
	if len(raw) == 0 || string(raw) == "null" {
		return ""
	}
	if raw[0] == '"' {
		var s string
		_ = json.Unmarshal(raw, &s)
		return s
	}
	return string(raw)
}

// deliveryID is callbackd's Callback-Delivery-Id for a Nats-Msg-Id: the
// first 16 hex digits of its SHA-256 (SPEC §3).
func deliveryID(msgID string) string {
	sum := sha256.Sum256([]byte(msgID))
	return hex.EncodeToString(sum[:8])
}
