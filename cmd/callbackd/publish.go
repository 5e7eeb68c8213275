package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/callbackd/callbackd/plugins"
	"github.com/callbackd/callbackd/plugins/builtin"
	"github.com/callbackd/callbackd/subjects"
)

// maxStdinEvent bounds what publish reads from stdin: the largest
// dispatcher.max_payload.
const maxStdinEvent = 8 << 20

func newPublishCmd() *cobra.Command {
	var account, project, data, msgID string
	cmd := &cobra.Command{
		Use:   "publish <event_type> --account A --project P [--data JSON | < file]",
		Short: "Publish an event to callbacks.event.<event_type>.<account>.<project>",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := idFlags(&account, &project); err != nil {
				return err
			}
			subject, err := subjects.Event(subjects.EventKey{Type: args[0], AccountID: account, ProjectID: project})
			if err != nil {
				return usageError{err}
			}
			body := []byte(data)
			if !cmd.Flags().Changed("data") {
				if body, err = io.ReadAll(io.LimitReader(cmd.InOrStdin(), maxStdinEvent+1)); err != nil {
					return fmt.Errorf("read event from stdin: %w", err)
				}
				if len(body) > maxStdinEvent {
					return usageError{fmt.Errorf("the event on stdin is over %d MiB, more than any dispatcher.max_payload", maxStdinEvent>>20)}
				}
			}
			if len(body) == 0 {
				return usageError{errors.New("no event: give --data JSON or the JSON on stdin")}
			}
			if err := jsonObject(body); err != nil {
				return usageError{fmt.Errorf("the event is not one JSON object (publish other bytes with nats pub): %w", err)}
			}
			cfg, log, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			// What serve would only dead-letter as invalid_event.
			if limit := cfg.Dispatcher.MaxPayload; int64(len(body)) > int64(limit) {
				return usageError{fmt.Errorf("the event is %d bytes, over dispatcher.max_payload (%s) (publish it with nats pub to see its dead letter)", len(body), limit)}
			}
			entry, ok := cfg.Plugins.Encoders[args[0]]
			if !ok {
				return usageError{fmt.Errorf("no encoder for event type %q in plugins.encoders (publish it with nats pub to see its dead letter)", args[0])}
			}
			// A built-in encoder's rules are known here: the event is
			// checked as serve will check it. (A third-party encoder's
			// are not: its events go as they are.)
			if enc := builtin.Encoders()[entry.Builtin]; enc != nil {
				out, err := enc.Encode(cmd.Context(), plugins.Event{Type: args[0], AccountID: account, ProjectID: project, Payload: body})
				switch {
				case errors.Is(err, plugins.ErrInvalidEvent):
					return usageError{fmt.Errorf("the event is invalid, and serve would dead-letter it (publish it with nats pub to see that): %w", err)}
				case err == nil && out.SkipReason != "":
					fmt.Fprintf(cmd.ErrOrStderr(), "callbackd: note: serve will skip this event, not deliver it: %s\n", out.SkipReason)
				}
			}
			nc, err := dialNATS(cfg, log)
			if err != nil {
				return err
			}
			defer nc.Close()
			js, err := jetstream.New(nc)
			if err != nil {
				return fmt.Errorf("jetstream: %w", err)
			}
			var opts []jetstream.PublishOpt
			if msgID != "" {
				opts = append(opts, jetstream.WithMsgID(msgID))
			}
			ack, err := js.Publish(cmd.Context(), subject, body, opts...)
			if err != nil {
				return fmt.Errorf("publish to %s: %w", subject, err)
			}
			dup := ""
			if ack.Duplicate {
				dup = " (duplicate: already in the stream, not published again)"
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "published %s to %s seq %d%s\n", subject, ack.Stream, ack.Sequence, dup)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&account, "account", "", "account ID, a number or a global ID (required)")
	f.StringVar(&project, "project", "", "project ID, a number or a global ID (required)")
	f.StringVar(&data, "data", "", "the event as a JSON object (default: read stdin)")
	f.StringVar(&msgID, "msg-id", "", "Nats-Msg-Id for de-duplication (also fixes the Callback-Delivery-Id)")
	_ = cmd.MarkFlagRequired("account")
	_ = cmd.MarkFlagRequired("project")
	return cmd
}

// jsonObject checks that b is one JSON object and nothing else: UTF-8 text
// (RFC 8259), each key once, as the built-in encoders require.
func jsonObject(b []byte) error {
	if t := bytes.TrimLeft(b, " \t\r\n"); len(t) == 0 || t[0] != '{' {
		return errors.New("it does not start with {")
	}
	if !utf8.Valid(b) {
		return errors.New("it is not valid UTF-8, as JSON text must be")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if _, err := dec.Token(); err != nil { // {
		return err
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key, _ := tok.(string)
		if seen[key] {
			if len(key) > 64 {
				key = key[:64] + "…"
			}
			return fmt.Errorf("the key %q is given twice", key)
		}
		seen[key] = true
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil { // }
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("there is more after the object")
	}
	return nil
}
