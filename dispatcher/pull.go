package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// puller makes one-shot pull requests on a consumer, as jetstream's Fetch
// does, without Fetch's per-call cost: Fetch subscribes a new inbox and
// starts a goroutine per call, and that goroutine takes a fresh
// time.After per message and parses each reply subject before handing the
// message on through a second channel. A puller keeps one subscription
// (its requests reply to inbox.<n>), one timer, and hands messages
// straight from the connection's channel to the caller, its metadata
// parsed once.
//
// Like Fetch, it keeps no pull accounting across requests: a request ends
// with its batch, the server's status (408 timeout, 404, 409) or, should
// that be lost to a reconnect, its expiry plus a second. Status messages
// come to the request's own reply subject, so an earlier request's are
// told apart; the stream's messages carry their own subjects, and a late
// one of an earlier request is handed out and counted for the request in
// progress. A puller is used by one goroutine.
type puller struct {
	nc     *nats.Conn
	next   string // the consumer's MSG.NEXT subject
	prefix string // the inbox, with a trailing "."; request n replies to prefix+n
	sub    *nats.Subscription
	msgs   chan *nats.Msg
	timer  *time.Timer
	seq    uint64
	req    []byte // {"batch":...,"expires":...}
	batch  int
	wait   time.Duration
	// open is set while the last request (replying to reply) may still
	// bring messages, until its status, its batch or its end (deadline).
	open     bool
	reply    string
	deadline time.Time
	left     int // of the open request's batch
}

// newPuller subscribes the puller's inbox for consumer c. batch is the most
// messages a request asks for, expires how long the server holds it.
func newPuller(js jetstream.JetStream, c jetstream.Consumer, batch int, expires time.Duration) (*puller, error) {
	info := c.CachedInfo()
	prefix := jetstream.DefaultAPIPrefix
	switch o := js.Options(); {
	case o.APIPrefix != "":
		prefix = o.APIPrefix
		if !strings.HasSuffix(prefix, ".") {
			prefix += "."
		}
	case o.Domain != "":
		prefix = "$JS." + o.Domain + ".API."
	}
	nc := js.Conn()
	p := &puller{
		nc:     nc,
		next:   prefix + "CONSUMER.MSG.NEXT." + info.Stream + "." + info.Name,
		prefix: nc.NewInbox() + ".",
		msgs:   make(chan *nats.Msg, pullRoom(batch)),
		timer:  time.NewTimer(time.Hour),
		batch:  batch,
		wait:   expires,
	}
	p.timer.Stop()
	p.req = fmt.Appendf(nil, `{"batch":%d,"expires":%d}`, batch, expires.Nanoseconds())
	sub, err := nc.ChanSubscribe(p.prefix+"*", p.msgs)
	if err != nil {
		return nil, fmt.Errorf("subscribe the pull inbox of consumer %s: %w", info.Name, err)
	}
	p.sub = sub
	return p, nil
}

// pullRoom is the room in a puller's channel: a message that finds it full
// is dropped by the connection and comes back only after its ack wait. One
// request is outstanding at a time, and the server sends nothing for a
// request past its expiry, which comes before the puller's own; the room
// for four batches covers a server slow to see a request end.
func pullRoom(batch int) int { return max(4*batch, 64) }

// closeWait bounds how long close waits for the server to confirm that it
// has stopped sending to the puller's inbox.
const closeWait = 2 * time.Second

// close unsubscribes and gives each message delivered but not handed out
// to handBack, so that it need not wait for its ack wait. The last request
// may still be open (pull returns at shutdown without waiting for it), and
// the server may have messages for it on their way: a plain unsubscribe
// would drop those, and each would hold a slot of the consumer's pending
// limit until its ack wait. So close first lets the open request end, then
// drains the subscription — the server stops sending once it has the
// unsubscribe, and a flush round trip later everything it sent before is
// in the channel (late messages of earlier requests included) — and only
// then closes it.
func (p *puller) close(handBack func(jetstream.Msg)) {
	p.timer.Stop()
	give := func(m *nats.Msg) {
		if status, _ := pullStatus(m); status == "" {
			handBack(newPullMsg(p.nc, m))
		}
	}
	// The server queues a consumer's messages before it routes them, so
	// a message queued for the open request as the unsubscribe arrives
	// would still be lost: first let that request end (its status comes
	// after its messages, and it ends with its batch or by its expiry at
	// the latest).
	if p.open {
		t := time.NewTimer(time.Until(p.deadline))
	end:
		for p.left > 0 {
			select {
			case m := <-p.msgs:
				if status, _ := pullStatus(m); status == "" {
					p.left--
					give(m)
				} else if m.Subject == p.reply {
					break end
				}
			case <-t.C:
				break end
			}
		}
		t.Stop()
		p.open = false
	}
	closed := p.sub.StatusChanged(nats.SubscriptionClosed)
	if err := p.sub.Drain(); err != nil {
		_ = p.sub.Unsubscribe() // the connection is closed: nothing more will come
	} else {
		t := time.NewTimer(closeWait)
	wait:
		for {
			select {
			case m := <-p.msgs:
				give(m)
			case <-closed:
				break wait
			case <-t.C:
				_ = p.sub.Unsubscribe()
				break wait
			}
		}
		t.Stop()
	}
	for {
		select {
		case m := <-p.msgs:
			give(m)
		default:
			return
		}
	}
}

// errPullStatus is a pull request ended by the server for a reason other
// than its batch, its expiry or no messages.
var errPullStatus = errors.New("pull request refused")

// pull makes one request and hands each message it brings to handle, on
// this goroutine, until the batch is complete, the request ends or ctx is
// done. The error is a request that could not be sent or that the server
// refused.
func (p *puller) pull(ctx context.Context, handle func(jetstream.Msg)) error {
	p.seq++
	reply := p.prefix + strconv.FormatUint(p.seq, 10)
	if err := p.nc.PublishRequest(p.next, reply, p.req); err != nil {
		return fmt.Errorf("send pull request: %w", err)
	}
	p.open, p.reply, p.deadline, p.left = true, reply, time.Now().Add(p.wait+time.Second), p.batch
	p.timer.Reset(p.wait + time.Second)
	defer p.timer.Stop()
	for got := 0; got < p.batch; {
		select {
		case m := <-p.msgs:
			status, desc := pullStatus(m)
			if status == "" {
				// A message of the stream: it carries its own subject, not
				// the request's, so it counts for the request in progress
				// (a late one of an earlier request ends this one early,
				// and the next request asks for the rest).
				got++
				p.left = p.batch - got
				handle(newPullMsg(p.nc, m))
				continue
			}
			if m.Subject != reply {
				continue // the end of an earlier request
			}
			switch {
			case status == "100": // a heartbeat: none is asked for
			case status == "404", status == "408", status == "409" && desc == "Batch Completed":
				p.open = false
				return nil
			default:
				p.open = false
				if desc == "" && status == "503" {
					// No responders: nothing serves the consumer now.
					desc = "No Responders (the consumer has no leader now, or is gone)"
				}
				return fmt.Errorf("%w: %s %s", errPullStatus, status, desc)
			}
		case <-p.timer.C:
			p.open = false
			return nil
		case <-ctx.Done():
			return nil // the request stays open: close waits for its end
		}
	}
	p.open = false // its batch is complete
	return nil
}

// pullStatus is the status code and description of a status message, ""
// for a message of the stream. The server's status messages have no
// payload, a Status header and no reply subject; every message of the
// stream has a reply subject (its ack subject), so a publisher's empty
// message with a Status header is a message of the stream like any other —
// taken for a status, it would be neither handed out nor acked, and would
// come back after each ack wait holding a slot of the consumer's pending
// limit, for good.
func pullStatus(m *nats.Msg) (status, desc string) {
	if m.Reply != "" || len(m.Data) > 0 || len(m.Header) == 0 {
		return "", ""
	}
	return m.Header.Get("Status"), m.Header.Get("Description")
}

// pullMsg is a message a puller handed out: jetstream.Msg over the
// connection, with its metadata parsed from the reply subject once.
type pullMsg struct {
	nc    *nats.Conn
	msg   *nats.Msg
	md    jetstream.MsgMetadata
	mdErr error
	acked atomic.Bool
}

var _ jetstream.Msg = (*pullMsg)(nil)

func newPullMsg(nc *nats.Conn, m *nats.Msg) *pullMsg {
	pm := &pullMsg{nc: nc, msg: m}
	pm.mdErr = parseAckSubject(m.Reply, &pm.md)
	return pm
}

// Metadata is the message's metadata; the caller must not modify it.
func (m *pullMsg) Metadata() (*jetstream.MsgMetadata, error) {
	if m.mdErr != nil {
		return nil, m.mdErr
	}
	return &m.md, nil
}

func (m *pullMsg) Data() []byte         { return m.msg.Data }
func (m *pullMsg) Headers() nats.Header { return m.msg.Header }
func (m *pullMsg) Subject() string      { return m.msg.Subject }
func (m *pullMsg) Reply() string        { return m.msg.Reply }
func (m *pullMsg) Ack() error           { return m.reply(ackAck, true) }
func (m *pullMsg) Nak() error           { return m.reply(ackNak, true) }
func (m *pullMsg) InProgress() error    { return m.reply(ackProgress, false) }
func (m *pullMsg) Term() error          { return m.reply(ackTerm, true) }
func (m *pullMsg) TermWithReason(reason string) error {
	return m.reply(append(append(append([]byte(nil), ackTerm...), ' '), reason...), true)
}

// NakWithDelay hands the message back to be redelivered after delay.
func (m *pullMsg) NakWithDelay(delay time.Duration) error {
	if delay <= 0 {
		return m.Nak()
	}
	body := append(append([]byte(nil), ackNak...), ` {"delay": `...)
	body = strconv.AppendInt(body, delay.Nanoseconds(), 10)
	return m.reply(append(body, '}'), true)
}

// DoubleAck acks and waits for the server to confirm it.
func (m *pullMsg) DoubleAck(ctx context.Context) error {
	if m.msg.Reply == "" {
		return jetstream.ErrMsgNoReply
	}
	if m.acked.Load() {
		return jetstream.ErrMsgAlreadyAckd
	}
	if _, err := m.nc.RequestWithContext(ctx, m.msg.Reply, ackAck); err != nil {
		return err
	}
	m.acked.Store(true)
	return nil
}

// Acknowledgement bodies (the JetStream wire protocol).
var (
	ackAck      = []byte("+ACK")
	ackNak      = []byte("-NAK")
	ackProgress = []byte("+WPI")
	ackTerm     = []byte("+TERM")
)

// reply sends an acknowledgement; final ones (all but +WPI) once only, as
// jetstream.Msg does.
func (m *pullMsg) reply(body []byte, final bool) error {
	if m.msg.Reply == "" {
		return jetstream.ErrMsgNoReply
	}
	if m.acked.Load() {
		return jetstream.ErrMsgAlreadyAckd
	}
	if err := m.nc.Publish(m.msg.Reply, body); err != nil {
		return err
	}
	if final {
		m.acked.Store(true)
	}
	return nil
}

// parseAckSubject reads a JetStream message's reply subject into md:
//
//	$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<tm>.<pending>
//	$JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<tm>.<pending>[.<token>...]
//
// as jetstream.Msg.Metadata does: 9 tokens, or at least 11 (a domain of
// "_" is none).
func parseAckSubject(subject string, md *jetstream.MsgMetadata) error {
	rest, ok := strings.CutPrefix(subject, "$JS.ACK.")
	if !ok {
		return fmt.Errorf("%w: reply subject %q is not a JetStream ack subject", jetstream.ErrNotJSMessage, subject)
	}
	var tok [9]string
	n := 0
	for n < len(tok) {
		var more bool
		tok[n], rest, more = strings.Cut(rest, ".")
		n++
		if !more {
			break
		}
	}
	// tok now holds the first n tokens after $JS.ACK.; rest what follows.
	var f []string
	switch {
	case n == 7 && rest == "": // v1: stream, consumer, delivered, sseq, cseq, tm, pending
		f = tok[:7]
	case n == 9: // v2: domain, account hash, then the v1 fields
		if tok[0] != "_" {
			md.Domain = tok[0]
		}
		f = tok[2:9]
	default:
		return fmt.Errorf("%w: reply subject %q has the wrong number of tokens", jetstream.ErrNotJSMessage, subject)
	}
	md.Stream, md.Consumer = f[0], f[1]
	nums := [5]uint64{}
	for i, s := range f[2:] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return fmt.Errorf("%w: reply subject %q: token %q is not a number", jetstream.ErrNotJSMessage, subject, s)
		}
		nums[i] = v
	}
	md.NumDelivered = nums[0]
	md.Sequence.Stream, md.Sequence.Consumer = nums[1], nums[2]
	md.Timestamp = time.Unix(0, int64(nums[3]))
	md.NumPending = nums[4]
	return nil
}
