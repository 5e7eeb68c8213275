package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/99designs/gqlgen/graphql"
	"github.com/99designs/gqlgen/graphql/handler"
	"github.com/99designs/gqlgen/graphql/handler/extension"
	"github.com/99designs/gqlgen/graphql/handler/lru"
	"github.com/99designs/gqlgen/graphql/handler/transport"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/gqlerror"

	"github.com/callbackd/callbackd/api/internal/gql"
	"github.com/callbackd/callbackd/plugins"
	"github.com/callbackd/callbackd/settings"
)

// Defaults of Options.
const (
	DefaultMaxBodyBytes    = 1 << 20
	DefaultComplexityLimit = 20000
	DefaultMaxDepth        = 10
	// MaxDeliveriesFirst caps deliveries(first:) (SPEC §4).
	MaxDeliveriesFirst = 500
	// DefaultReplayTimeout bounds one replayDeadLetters call. It is well
	// under the admin HTTP server's write timeout, so the answer, with the
	// counts of a replay that ran out of time, always reaches the client
	// (api/README.md, "Limits"); running the mutation again goes on.
	DefaultReplayTimeout = 40 * time.Second
	// DefaultTestCallbackDeadline is when, after the request's headers,
	// the test callbacks of a request must be done: the admin server's
	// default write timeout (60 s) less 5 s for the answer.
	DefaultTestCallbackDeadline = 55 * time.Second
	// DefaultTokenLimit caps the tokens of a GraphQL document (the
	// introspection query has ~200). Checking a document costs up to the
	// square of its fields and fragments, so this is what keeps one
	// request's cost small: 20,000 aliases took ~30 s and 20,000 chained
	// fragments 11 GB without it.
	DefaultTokenLimit = 5000
	// MaxTestCallbacks caps the sendTestCallback fields of one operation:
	// each can take delivery.timeout.
	MaxTestCallbacks = 5
	// maxCachedQuery is the longest query text whose parsed document is
	// cached (the admin API's are a few hundred bytes): the cache holds
	// 1000 documents, and a megabyte each would be a gigabyte.
	maxCachedQuery = 16 << 10
)

// Options configure a Server. Store and Token are required; every other
// field has a documented zero value.
type Options struct {
	// Store is the settings bucket the settings queries read and the
	// mutations write (compare-and-set).
	Store *settings.Store
	// Token is the bearer token every route but /healthz requires.
	Token string
	// Guard is the current outbound policy: a callback or webhook URL whose
	// host is a literal IP it refuses is refused. nil refuses as
	// plugins.NewGuard(false, nil) does.
	Guard *plugins.Guard
	// Transport delivers sendTestCallback's notification; nil makes that
	// mutation answer ErrUnavailable.
	Transport plugins.Transport
	// Deliveries answers the deliveries query; nil makes it answer
	// ErrUnavailable.
	Deliveries DeliveryLog
	// Recorder stores sendTestCallback's attempt in the delivery log; nil
	// keeps test callbacks out of the log, and their Delivery's ID is then
	// the global ID of the test's Callback-Delivery-Id.
	Recorder DeliveryRecorder
	// Replayer runs replayDeadLetters; nil makes it answer ErrUnavailable.
	Replayer Replayer
	// Checks decide /readyz; none means always ready.
	Checks []Check
	// Metrics is served at /metrics; nil serves a fresh Metrics with no
	// callbacks.
	Metrics *Metrics
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
	// MaxBodyBytes limits request bodies (0 → 1 MiB).
	MaxBodyBytes int64
	// ComplexityLimit limits a GraphQL operation's complexity (0 → 20000;
	// each field costs 1, deliveries multiplies its selection by first).
	ComplexityLimit int
	// MaxDepth limits how deeply a GraphQL operation's fields nest, not
	// counting introspection (0 → 10).
	MaxDepth int
	// ReplayTimeout bounds one replayDeadLetters call (0 →
	// DefaultReplayTimeout), counted from when the request's headers were
	// read, as the HTTP server's WriteTimeout is (a body sent slowly eats
	// into the replay's time, not into the answer's). A replay that
	// reaches it stops and answers what it did with a REPLAY_INCOMPLETE
	// error. Keep it shorter than WriteTimeout, with room for the letter
	// in hand and the answer.
	ReplayTimeout time.Duration
	// TestCallbackDeadline is when, after the request's headers, the
	// request's test callbacks must be done (0 →
	// DefaultTestCallbackDeadline): one running then is cut off, and later
	// ones are not sent (TIME_LIMIT_EXCEEDED). Keep it shorter than the
	// write timeout, with room for the answer.
	TestCallbackDeadline time.Duration
	// TokenLimit caps the tokens of a GraphQL document (0 →
	// DefaultTokenLimit).
	TokenLimit int
}

// Server is the admin API's http.Handler.
type Server struct {
	store      *settings.Store
	guard      *plugins.Guard
	transport  plugins.Transport
	deliveries DeliveryLog
	recorder   DeliveryRecorder
	replayer   Replayer
	checks     []Check
	metrics    *Metrics
	log        *slog.Logger
	maxBody    int64
	replayTime time.Duration
	testTime   time.Duration
	token      [32]byte
	mux        *http.ServeMux
}

// New returns the admin API handler.
func New(o Options) (*Server, error) {
	if o.Store == nil {
		return nil, errors.New("api: a settings store is required")
	}
	if len(o.Token) < minTokenLen {
		return nil, fmt.Errorf("api: the admin token must be at least %d characters", minTokenLen)
	}
	if o.Guard == nil {
		o.Guard = plugins.NewGuard(false, nil)
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(MetricsOptions{})
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if o.ComplexityLimit <= 0 {
		o.ComplexityLimit = DefaultComplexityLimit
	}
	if o.MaxDepth <= 0 {
		o.MaxDepth = DefaultMaxDepth
	}
	if o.ReplayTimeout <= 0 {
		o.ReplayTimeout = DefaultReplayTimeout
	}
	if o.TestCallbackDeadline <= 0 {
		o.TestCallbackDeadline = DefaultTestCallbackDeadline
	}
	if o.TokenLimit <= 0 {
		o.TokenLimit = DefaultTokenLimit
	}
	s := &Server{
		store:      o.Store,
		guard:      o.Guard,
		transport:  o.Transport,
		deliveries: o.Deliveries,
		recorder:   o.Recorder,
		replayer:   o.Replayer,
		checks:     o.Checks,
		metrics:    o.Metrics,
		log:        o.Logger,
		maxBody:    o.MaxBodyBytes,
		replayTime: o.ReplayTimeout,
		testTime:   o.TestCallbackDeadline,
		token:      tokenDigest(o.Token),
		mux:        http.NewServeMux(),
	}

	s.mux.Handle("/graphql", s.graphQLHandler(o.ComplexityLimit, o.MaxDepth, o.TokenLimit))
	s.mux.HandleFunc("/readyz", s.handleReadyz)
	s.mux.Handle("/metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		ErrorHandling: promhttp.ContinueOnError,
	}))
	return s, nil
}

// ServeHTTP serves /healthz to anyone and every other route to requests
// bearing the token.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/healthz" {
		handleHealthz(w, r)
		return
	}
	if !s.authorized(r) {
		unauthorized(w)
		return
	}
	s.mux.ServeHTTP(w, r)
}

func (s *Server) authorized(r *http.Request) bool { return bearerMatches(r, s.token) }

// bearerMatches reports whether r bears the token of digest.
func bearerMatches(r *http.Request, digest [32]byte) bool {
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	return tokenMatches(digest, strings.TrimSpace(tok))
}

// unauthorized is the answer to a request without the token.
func unauthorized(w http.ResponseWriter) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="callbackd"`)
	http.Error(w, "unauthorized: send Authorization: Bearer <admin token>", http.StatusUnauthorized)
}

// Starting is the admin API's handler while callbackd starts (NATS, the
// streams, the settings bucket), before New's can be made: /healthz
// answers 200 to anyone; with the token, /readyz answers 503 with what
// start-up waits for (waiting()), and every other route 503.
func Starting(token string, waiting func() string) http.Handler {
	digest := tokenDigest(token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			handleHealthz(w, r)
			return
		}
		if !bearerMatches(r, digest) {
			unauthorized(w)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusServiceUnavailable)
		if r.URL.Path == "/readyz" {
			_, _ = w.Write([]byte("fail starting: " + oneLine(waiting()) + "\n"))
			return
		}
		_, _ = w.Write([]byte("callbackd is starting: " + oneLine(waiting()) + "\n"))
	})
}

// graphQLHandler is POST /graphql: a JSON body of at most maxBody bytes
// holding a GraphQL request, its document limited in tokens, complexity,
// depth and test callbacks.
func (s *Server) graphQLHandler(complexityLimit, maxDepth, tokenLimit int) http.Handler {
	cfg := gql.Config{Resolvers: &resolver{s: s}}
	cfg.Complexity.Query.Deliveries = func(child int, _, _ *string, _ *gql.DeliveryStatus, first *int, _ *string) int {
		n := 50
		if first != nil {
			n = min(max(*first, 1), MaxDeliveriesFirst)
		}
		return 1 + child*n
	}
	h := handler.New(gql.NewExecutableSchema(cfg))
	h.AddTransport(transport.POST{})
	h.SetQueryCache(shortQueries{lru.New[*ast.QueryDocument](1000)})
	h.SetParserTokenLimit(tokenLimit)
	h.Use(extension.Introspection{})
	h.Use(operationLimits{ // before the complexity walk of the expanded operation
		maxFields: complexityLimit, maxDepth: maxDepth,
		field: "sendTestCallback", maxField: MaxTestCallbacks,
	})
	h.Use(extension.FixedComplexityLimit(complexityLimit))
	h.SetErrorPresenter(s.presentError)
	h.SetRecoverFunc(func(_ context.Context, p any) error {
		s.log.Error("api: resolver panicked", "panic", p)
		return errors.New("internal server error")
	})

	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			methodNotAllowed(w, "POST")
			return
		}
		r = r.WithContext(context.WithValue(r.Context(), requestStartKey{}, time.Now()))
		if r.ContentLength > s.maxBody {
			// Refused before a byte is read: the client may not send
			// what it announced.
			http.Error(w, fmt.Sprintf("request body over %d bytes", s.maxBody), http.StatusRequestEntityTooLarge)
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.maxBody))
		if err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				http.Error(w, fmt.Sprintf("request body over %d bytes", s.maxBody), http.StatusRequestEntityTooLarge)
				return
			}
			http.Error(w, "cannot read request body", http.StatusBadRequest)
			return
		}
		if mt := r.Header.Get("Content-Type"); !strings.HasPrefix(strings.ToLower(strings.TrimSpace(mt)), "application/json") {
			http.Error(w, "Content-Type must be application/json", http.StatusUnsupportedMediaType)
			return
		}
		// gqlgen's own errors would repeat the whole body, header values
		// included: say what is wrong instead.
		if !json.Valid(body) {
			badJSON(w, body)
			return
		}
		// JSON text is UTF-8; Go's decoder would store U+FFFD for bytes
		// that are not, a value nobody sent.
		if !utf8.Valid(body) {
			badRequest(w, "request body is not valid UTF-8")
			return
		}
		if msg := badParams(body); msg != "" {
			badRequest(w, msg)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		h.ServeHTTP(w, r)
	})
}

// badJSON answers a request whose body is not JSON, as gqlgen answers a
// body it cannot decode (400, a GraphQL error) but without the body.
func badJSON(w http.ResponseWriter, body []byte) {
	msg := "request body is not valid JSON"
	var se *json.SyntaxError
	err := json.Unmarshal(body, new(json.RawMessage))
	switch {
	case errors.As(err, &se) && strings.Contains(se.Error(), "exceeded max depth"):
		msg = fmt.Sprintf("request body nests JSON too deeply (at byte %d)", se.Offset)
	case errors.As(err, &se):
		msg += fmt.Sprintf(" (at byte %d)", se.Offset)
	case len(bytes.TrimSpace(body)) == 0:
		msg = "request body is empty, want a GraphQL request in JSON"
	}
	badRequest(w, msg)
}

// badParams says what is wrong with a JSON body that is not a GraphQL
// request (an object whose query and operationName are strings, and whose
// variables and extensions are objects), "" when nothing is.
func badParams(body []byte) string {
	var p struct {
		Query         *string        `json:"query"`
		OperationName *string        `json:"operationName"`
		Variables     map[string]any `json:"variables"`
		Extensions    map[string]any `json:"extensions"`
	}
	err := json.Unmarshal(body, &p)
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &te) && te.Field == "":
		return "request body must be a JSON object with a \"query\", got " + jsonKind(te.Value)
	case errors.As(err, &te):
		want := "a string"
		if te.Field == "variables" || te.Field == "extensions" {
			want = "a JSON object (or null)"
		}
		return fmt.Sprintf("request body: %q must be %s, got %s", te.Field, want, jsonKind(te.Value))
	case err != nil:
		return "request body is not a GraphQL request"
	case p.Query == nil || *p.Query == "":
		return "request body has no \"query\""
	}
	return ""
}

// jsonKind names the kind of JSON value json.UnmarshalTypeError.Value
// describes.
func jsonKind(v string) string {
	switch {
	case v == "number" || strings.HasPrefix(v, "number "):
		return "a number"
	case v == "string":
		return "a string"
	case v == "bool":
		return "a boolean"
	case v == "array":
		return "an array"
	case v == "object":
		return "an object"
	}
	return v
}

// badRequest answers 400 with one GraphQL error of code BAD_REQUEST.
func badRequest(w http.ResponseWriter, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadRequest)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"errors": []map[string]any{{"message": msg, "extensions": map[string]string{"code": "BAD_REQUEST"}}},
		"data":   nil,
	})
}

// presentError turns a resolver's error into the GraphQL error sent back.
// Errors the API made on purpose (*gqlerror.Error: field errors and the
// like) go out as they are; anything else is logged and sent with its
// message.
func (s *Server) presentError(ctx context.Context, err error) *gqlerror.Error {
	var gerr *gqlerror.Error
	if errors.As(err, &gerr) && gerr.Err == nil {
		out := graphql.DefaultErrorPresenter(ctx, err)
		out.Message = clearerMessage(out.Message, out.Path)
		return out
	}
	s.log.Warn("api: request failed", "path", graphql.GetPath(ctx).String(), "err", err)
	return graphql.DefaultErrorPresenter(ctx, err)
}

// enumTypes are the schema's enums, whose generated unmarshalers say
// "<value> is not a valid <Enum>".
var enumTypes = map[string]bool{"DeliveryStatus": true}

// clearerMessage rewrites the messages of gqlgen and gqlparser that say
// little or something wrong: "operation  not found" for a document of
// several operations and no operationName; "cannot use value 0 as Int"
// for 2.5, "cannot use string as Boolean" for 1 (a number in the JSON
// variables, decoded as a json.Number).
func clearerMessage(msg string, path ast.Path) string {
	if name, ok := strings.CutPrefix(msg, "operation "); ok && strings.HasSuffix(name, " not found") && len(path) == 0 {
		if name = strings.TrimSuffix(name, " not found"); name == "" {
			return "operationName is required: the document does not hold exactly one operation"
		}
		return fmt.Sprintf("the document holds no operation named %q", name)
	}
	// gqlparser calls an integer literal beyond int64 "non-integer".
	if v, ok := strings.CutPrefix(msg, "ID cannot represent a non-string and non-integer value: "); ok && v != "" && strings.Trim(v, "0123456789") == "" {
		return fmt.Sprintf("ID cannot represent %s: IDs are at most 9223372036854775807", v)
	}
	// A literal of the wrong type is named by its type, not repeated: it
	// may be a header value.
	if m := literalTypeError.FindStringSubmatch(msg); m != nil {
		return m[1]
	}
	if m := unknownEnumValue.FindStringSubmatch(msg); m != nil {
		return "not a value of the " + m[1] + " enum"
	}
	if len(path) == 0 {
		return msg
	}
	if _, def, ok := strings.Cut(msg, " is not a valid "); ok && enumTypes[def] {
		return "not a valid " + def // an enum variable: its value unrepeated
	}
	if first, ok := path[0].(ast.PathName); !ok || !strings.HasPrefix(string(first), "variable") {
		return msg
	}
	m := variableTypeError.FindStringSubmatch(msg)
	if m == nil {
		return msg
	}
	switch m[1] {
	case "Int":
		return "must be an integer from -2147483648 to 2147483647"
	case "Float":
		return "must be a number"
	case "String":
		return "must be a string"
	case "Boolean":
		return "must be a boolean (true or false)"
	case "ID":
		return "must be a string or an integer"
	}
	return msg
}

// literalTypeError matches gqlparser's errors for a literal of the wrong
// type; the part before the value is kept.
var literalTypeError = regexp.MustCompile(`^((?:Int|Float|String|Boolean|ID|Enum "\w+") cannot represent [^:]*value): .*$`)

// unknownEnumValue matches gqlparser's error for an enum literal that is
// not one of the enum's values.
var unknownEnumValue = regexp.MustCompile(`^Value ".*" does not exist in "(\w+)" enum\.?$`)

// variableTypeError matches gqlparser's errors for a variable of the wrong
// type ("cannot use bool as Int", "cannot use value 0 as Int", "cannot use
// 1e+20 as ID: integers beyond 2^53-1 …").
var variableTypeError = regexp.MustCompile(`^cannot use .* as (Int|Float|String|Boolean|ID)(:|$)`)

// requestStartKey holds, in a GraphQL request's context, when its handler
// started: when the HTTP server had read its headers and set its write
// deadline, before the body is read.
type requestStartKey struct{}

// requestStart is when the request's handler started, or now when ctx has
// no such time.
func requestStart(ctx context.Context) time.Time {
	if t, ok := ctx.Value(requestStartKey{}).(time.Time); ok {
		return t
	}
	return time.Now()
}

func methodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
}

// shortQueries caches the parsed documents of short queries only.
type shortQueries struct {
	graphql.Cache[*ast.QueryDocument]
}

func (c shortQueries) Add(ctx context.Context, query string, doc *ast.QueryDocument) {
	if len(query) <= maxCachedQuery {
		c.Cache.Add(ctx, query, doc)
	}
}
