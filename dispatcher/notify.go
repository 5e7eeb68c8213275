package dispatcher

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/callbackd/callbackd/plugins"
)

// notifyMsg is a queued notification: what to send and where. It is the
// payload of callbacks.notify.<account>.<project>. The destination's header
// values are stored with it, as they are in the settings bucket.
type notifyMsg struct {
	Destination  plugins.Destination
	Notification plugins.Notification
	// SSOWebhook means the destination is the account's SSO client
	// webhook, looked up again at every attempt (a rotated credential or a
	// fixed URL is in effect for retries and replays too); Destination
	// then holds the URL for the record only, without userinfo, query or
	// headers, so no secret of the settings sits in a stream.
	SSOWebhook bool
}

type notifyWire struct {
	URL        string       `json:"url"`
	SSOWebhook bool         `json:"sso_webhook,omitempty"`
	Headers    []headerWire `json:"headers,omitempty"`
	Fields     []fieldWire  `json:"fields"`
}

type headerWire struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

type fieldWire struct {
	Name string `json:"name"`
	Kind string `json:"kind"`
	Text string `json:"text,omitempty"`
}

var kindNames = map[plugins.Kind]string{
	plugins.KindNull: "null", plugins.KindString: "string", plugins.KindNumber: "number", plugins.KindBool: "bool",
}

func encodeNotify(n notifyMsg) ([]byte, error) {
	w := notifyWire{URL: n.Destination.URL}
	if n.SSOWebhook {
		w.URL, w.SSOWebhook = plugins.SafeURL(n.Destination.URL), true
	} else {
		for _, h := range n.Destination.Headers {
			w.Headers = append(w.Headers, headerWire(h))
		}
	}
	for _, f := range n.Notification.Fields {
		k, ok := kindNames[f.Value.Kind]
		if !ok {
			return nil, fmt.Errorf("field %q: unknown kind %v", f.Name, f.Value.Kind)
		}
		w.Fields = append(w.Fields, fieldWire{Name: f.Name, Kind: k, Text: f.Value.Text})
	}
	return json.Marshal(w)
}

func decodeNotify(data []byte) (notifyMsg, error) {
	var w notifyWire
	if err := json.Unmarshal(data, &w); err != nil {
		return notifyMsg{}, fmt.Errorf("notification: %w", err)
	}
	if w.URL == "" {
		return notifyMsg{}, errors.New("notification: no url")
	}
	n := notifyMsg{Destination: plugins.Destination{URL: w.URL}, SSOWebhook: w.SSOWebhook}
	for _, h := range w.Headers {
		n.Destination.Headers = append(n.Destination.Headers, plugins.Header(h))
	}
	n.Notification.Fields = make([]plugins.Field, 0, len(w.Fields))
	for _, f := range w.Fields {
		var kind plugins.Kind
		switch f.Kind {
		case "null":
			kind = plugins.KindNull
		case "string":
			kind = plugins.KindString
		case "number":
			kind = plugins.KindNumber
		case "bool":
			kind = plugins.KindBool
		default:
			return notifyMsg{}, fmt.Errorf("notification: field %q: unknown kind %q", f.Name, f.Kind)
		}
		n.Notification.Fields = append(n.Notification.Fields, plugins.Field{Name: f.Name, Value: plugins.Value{Kind: kind, Text: f.Text}})
	}
	return n, nil
}
