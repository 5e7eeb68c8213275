package config

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/env/v2"
	"github.com/knadh/koanf/providers/file"
	"github.com/knadh/koanf/providers/posflag"
	"github.com/knadh/koanf/v2"
	"github.com/spf13/pflag"
	yamlv3 "go.yaml.in/yaml/v3"
)

// DefaultFile is read when --config is not given, if it exists in the working
// directory.
const DefaultFile = "callbackd.yaml"

// EnvPrefix starts every environment variable Load reads; "__" separates
// levels and a single "_" is part of a key (CALLBACKD_DISPATCHER__MAX_PAYLOAD).
const EnvPrefix = "CALLBACKD_"

// configFlag is the flag naming the YAML file; it is not a configuration key.
const configFlag = "config"

// RegisterFlags registers --config and one flag per scalar key, named by its
// dotted key (--data_dir, --nats.url, --delivery.timeout, ...). A flag only
// overrides the file and environment when the user sets it; the defaults
// shown in help are Default()'s.
func RegisterFlags(fs *pflag.FlagSet) {
	d := Default()
	fs.String(configFlag, "", "YAML config file (default "+DefaultFile+" if present; \"\" reads none)")

	fs.String("data_dir", d.DataDir, "JetStream store and node state of the embedded server")

	fs.Bool("nats.embedded", d.NATS.Embedded, "run an in-process NATS server with JetStream in data_dir")
	fs.String("nats.listen", d.NATS.Listen, `embedded server's client address ("" = in-process only)`)
	fs.String("nats.url", d.NATS.URL, "external NATS server or cluster (with --nats.embedded=false)")
	fs.String("nats.credentials", d.NATS.Credentials, "creds file for an external server")
	fs.String("nats.auth.user", d.NATS.Auth.User, "user required of clients of the embedded listener")
	fs.String("nats.auth.password", d.NATS.Auth.Password, "password for nats.auth.user")
	fs.String("nats.auth.token", d.NATS.Auth.Token, "token required of clients of the embedded listener")
	fs.String("nats.tls.cert", d.NATS.TLS.Cert, "TLS certificate file")
	fs.String("nats.tls.key", d.NATS.TLS.Key, "TLS key file")
	fs.String("nats.tls.ca", d.NATS.TLS.CA, "TLS CA bundle")
	fs.String("nats.server_name", d.NATS.ServerName, "server name, unique and stable per node (default: generated once, kept in data_dir)")
	fs.String("nats.cluster.name", d.NATS.Cluster.Name, "cluster name")
	fs.String("nats.cluster.listen", d.NATS.Cluster.Listen, "cluster listen address")
	fs.StringSlice("nats.cluster.routes", d.NATS.Cluster.Routes, "cluster routes as nats://host:port")
	fs.String("nats.cluster.tls.cert", d.NATS.Cluster.TLS.Cert, "cluster TLS certificate file")
	fs.String("nats.cluster.tls.key", d.NATS.Cluster.TLS.Key, "cluster TLS key file")
	fs.String("nats.cluster.tls.ca", d.NATS.Cluster.TLS.CA, "cluster TLS CA bundle")
	fs.Int("nats.replicas", d.NATS.Replicas, "replicas of every stream and bucket (3 for node-loss tolerance)")
	fs.Duration("nats.duplicates", d.NATS.Duplicates, "Nats-Msg-Id de-duplication window")

	fs.Int("dispatcher.workers", d.Dispatcher.Workers, "dispatcher workers (CPU work: decode, encode, route)")
	fs.Int("dispatcher.per_host_concurrency", d.Dispatcher.PerHostConcurrency, "attempts in flight per callback host")
	fs.Int("dispatcher.max_ack_pending", 0, "unacknowledged messages per consumer (default 4 × dispatcher.workers)")
	fs.Int("dispatcher.max_retry_pending", d.Dispatcher.MaxRetryPending, "deliveries waiting for a retry")
	fs.Int("dispatcher.max_deliveries", d.Dispatcher.MaxDeliveries, "deliveries of one event that infrastructure errors or crashes may use up before it is dead-lettered")
	fs.String("dispatcher.max_payload", d.Dispatcher.MaxPayload.String(), "largest event payload (bytes, KiB, MiB)")

	fs.Duration("delivery.timeout", d.Delivery.Timeout, "timeout of one delivery attempt")
	fs.Int("delivery.max_in_flight", d.Delivery.MaxInFlight, "delivery attempts in flight")
	fs.Int("delivery.max_attempts", d.Delivery.MaxAttempts, "attempts before an event is dead")
	fs.DurationSlice("delivery.backoff", d.Delivery.Backoff, "delays between attempts")
	fs.Bool("delivery.allow_private", d.Delivery.AllowPrivate, "allow callbacks to private, loopback and link-local addresses")
	fs.StringSlice("delivery.allow_cidrs", d.Delivery.AllowCIDRs, "networks allowed despite --delivery.allow_private=false")

	fs.Duration("retention.events", d.Retention.Events, "how long fresh events are kept")
	fs.Duration("retention.dead", d.Retention.Dead, "how long dead events are kept")
	fs.Duration("retention.log", d.Retention.Log, "how long the delivery log is kept")
	fs.String("retention.log_bytes", d.Retention.LogBytes.String(), "size cap of the delivery log")

	fs.String("plugins.dir", d.Plugins.Dir, "directory of plugin executables")
	fs.String("plugins.builtins", d.Plugins.Builtins, "run built-in plugins as a subprocess (process) or inprocess")
	fs.Duration("plugins.call_timeout", d.Plugins.CallTimeout, "timeout of one plugin call")
	fs.String("plugins.transport", "builtin:"+d.Plugins.Transport.Builtin, "transport plugin (builtin:<name>)")
	fs.String("plugins.failure", "builtin:"+d.Plugins.Failure.Builtin, "callback-failed plugin (builtin:<name>)")

	fs.String("api.listen", d.API.Listen, "admin API address")
	fs.String("api.token", d.API.Token, "admin API bearer token")
	fs.String("api.tls.cert", d.API.TLS.Cert, "admin API TLS certificate file")
	fs.String("api.tls.key", d.API.TLS.Key, "admin API TLS key file")

	fs.String("log.level", d.Log.Level, "log level: debug, info, warn or error")
	fs.String("log.format", d.Log.Format, "log format: text or json")
}

// Load builds the configuration from Default(), the YAML file (--config, or
// DefaultFile if present), the CALLBACKD_ variables in environ (os.Environ()
// form; the process environment is not read) and the flags of fs the user
// changed, in that order of precedence, then validates it. fs may be nil.
//
// Unknown keys in the file and bad values are errors naming the key (see
// KeyError); unknown CALLBACKD_ variables come back as warnings. Warnings are
// returned even when err is not nil.
func Load(fs *pflag.FlagSet, environ []string) (*Config, []string, error) {
	k := koanf.New(".")
	var unknown error // the file's unknown keys

	path, err := configFile(fs)
	if err != nil {
		return nil, nil, err
	}
	if path != "" {
		if err := k.Load(file.Provider(path), oneDocument{yaml.Parser()}); err != nil {
			return nil, nil, fmt.Errorf("config: file %s: %w", path, oneLine(err))
		}
		// The file is the first layer, so k holds only its keys here.
		// Unknown keys are reported with the bad values, all at once.
		unknown = unknownKeys(k.Raw(), path)
		if err := nullValues(k.Raw(), path); err != nil {
			return nil, nil, errors.Join(unknown, err)
		}
	}

	var warnings []string
	fromEnv := map[string]string{} // key → the variable that set it
	err = k.Load(env.Provider(".", env.Opt{
		Prefix:      EnvPrefix,
		EnvironFunc: func() []string { return environ },
		TransformFunc: func(name, value string) (string, any) {
			if nonConfigEnv[name] {
				return "", nil
			}
			key := envKey(name)
			t, ok := settable(key)
			if !ok {
				warnings = append(warnings, unknownEnvWarning(name, key))
				return "", nil
			}
			fromEnv[key] = name
			return key, envValue(t, value)
		},
	}), nil)
	if err != nil {
		return nil, warnings, fmt.Errorf("config: environment: %w", err)
	}

	if fs != nil {
		// Only flags the user set, and only configuration keys: fs may be a
		// command's flag set holding --help and other flags of its own.
		err := k.Load(posflag.ProviderWithFlag(fs, ".", k, func(f *pflag.Flag) (string, any) {
			if !f.Changed || f.Name == configFlag {
				return "", nil
			}
			if _, ok := settable(f.Name); !ok {
				return "", nil
			}
			delete(fromEnv, f.Name) // the flag's value is the one read
			return f.Name, posflag.FlagVal(fs, f)
		}), nil)
		if err != nil {
			return nil, warnings, fmt.Errorf("config: flags: %w", err)
		}
	}

	deriveAckPending := k.Get("dispatcher.max_ack_pending") == nil

	// Decoding onto Default() keeps the defaults of every key no layer set.
	cfg := Default()
	err = k.UnmarshalWithConf("", cfg, koanf.UnmarshalConf{DecoderConfig: &mapstructure.DecoderConfig{
		DecodeHook: mapstructure.ComposeDecodeHookFunc(
			durationHook,
			integerHook,
			pluginEntryHook,
			mapstructure.TextUnmarshallerHookFunc(),
		),
		// Not weakly typed: `data_dir: true` or `workers: "8"` in the file
		// is an error, not a guess. envValue types environment strings.
		// (Unknown keys already found are not reported again.)
		ErrorUnused: unknown == nil,
		TagName:     "koanf",
	}})
	if err != nil {
		return nil, warnings, namingVariables(joinKeyErrors(unknown, keyErrors(err)), fromEnv)
	}
	if deriveAckPending && 0 < cfg.Dispatcher.Workers && cfg.Dispatcher.Workers <= maxWorkers {
		// (A bad workers is reported as such, not again as a derived
		// max_ack_pending the user never set.)
		cfg.Dispatcher.MaxAckPending = 4 * cfg.Dispatcher.Workers
	}
	if err := errors.Join(unknown, cfg.Validate()); err != nil {
		return nil, warnings, namingVariables(err, fromEnv)
	}
	return cfg, warnings, nil
}

// namingVariables adds to each KeyError whose value came from the
// environment the variable that set it: the key alone leaves an operator
// looking in a file that does not hold it.
func namingVariables(err error, fromEnv map[string]string) error {
	if err == nil || len(fromEnv) == 0 {
		return err
	}
	var ke *KeyError
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs := j.Unwrap()
		out := make([]error, len(errs))
		for i, e := range errs {
			out[i] = namingVariables(e, fromEnv)
		}
		return errors.Join(out...)
	}
	if !errors.As(err, &ke) || ke.Key == "" {
		return err
	}
	key, _, _ := strings.Cut(ke.Key, "[") // delivery.backoff[1] came from delivery.backoff
	if name, ok := fromEnv[key]; ok {
		return &KeyError{Key: ke.Key, Err: fmt.Errorf("%w (set by %s)", ke.Err, name)}
	}
	return err
}

// configFile returns the file to read: the --config value when set (an
// explicit "" reads none), else DefaultFile if it exists.
func configFile(fs *pflag.FlagSet) (string, error) {
	if fs != nil {
		if f := fs.Lookup(configFlag); f != nil && f.Changed {
			return f.Value.String(), nil
		}
	}
	switch _, err := os.Stat(DefaultFile); {
	case err == nil:
		return DefaultFile, nil
	case errors.Is(err, os.ErrNotExist):
		return "", nil
	default:
		return "", fmt.Errorf("config: %w", err)
	}
}

var (
	configType      = reflect.TypeFor[Config]()
	intType         = reflect.TypeFor[int]()
	durationType    = reflect.TypeFor[time.Duration]()
	pluginEntryType = reflect.TypeFor[PluginEntry]()
)

// keyType returns the Go type a dotted key decodes into, following koanf
// tags through structs and any key through maps; false if Config has no such
// key.
func keyType(key string) (reflect.Type, bool) {
	t := configType
	for part := range strings.SplitSeq(key, ".") {
		switch t.Kind() {
		case reflect.Struct:
			f, ok := fieldByKey(t, part)
			if !ok {
				return nil, false
			}
			t = f.Type
		case reflect.Map:
			if part == "" {
				return nil, false
			}
			t = t.Elem()
		default:
			return nil, false
		}
	}
	return t, true
}

func fieldByKey(t reflect.Type, key string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("koanf"), ",")
		if name != "" && name != "-" && name == key {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// settable reports whether key holds a single value (a scalar, a list or a
// plugin entry) that an environment variable or a flag can set.
func settable(key string) (reflect.Type, bool) {
	t, ok := keyType(key)
	if !ok {
		return nil, false
	}
	if t != pluginEntryType && (t.Kind() == reflect.Struct || t.Kind() == reflect.Map) {
		return nil, false
	}
	return t, true
}

// nonConfigEnv are CALLBACKD_ variables that are not config keys but are
// read elsewhere (the CLI's admin token), so they are not warned about.
var nonConfigEnv = map[string]bool{"CALLBACKD_TOKEN": true, "CALLBACKD_TEST_LOG": true}

// unknownKeys returns a KeyError per key of the file's map that Config does
// not have.
func unknownKeys(raw map[string]any, path string) error {
	var keys []string
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for k, v := range m {
			key := prefix + k
			t, ok := keyType(key)
			if !ok {
				keys = append(keys, key)
				continue
			}
			if sub, isMap := v.(map[string]any); isMap && (t.Kind() == reflect.Struct || t.Kind() == reflect.Map) {
				walk(key+".", sub)
			}
		}
	}
	walk("", raw)
	sort.Strings(keys)
	errs := make([]error, 0, len(keys))
	for _, key := range keys {
		errs = append(errs, &KeyError{Key: key, Err: fmt.Errorf("%w in %s", ErrUnknownKey, path)})
	}
	return errors.Join(errs...)
}

// nullValues returns a KeyError per key of the file whose value, or one of
// whose list entries, is null (`timeout:` with nothing after it, or `[1s,
// null]`). Decoding would keep the default there, a value nobody wrote; a
// section with nothing under it is fine.
func nullValues(raw map[string]any, path string) error {
	var errs []error
	bad := func(key string) {
		errs = append(errs, &KeyError{Key: key, Err: fmt.Errorf("no value (null) in %s: give one, or leave the key out for its default", path)})
	}
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for _, k := range slices.Sorted(maps.Keys(m)) {
			key, v := prefix+k, m[k]
			t, _ := keyType(key)
			switch v := v.(type) {
			case nil:
				if t == nil || t == pluginEntryType || (t.Kind() != reflect.Struct && t.Kind() != reflect.Map) {
					bad(key)
				}
			case map[string]any:
				walk(key+".", v)
			case []any:
				for i, e := range v {
					if e == nil {
						bad(fmt.Sprintf("%s[%d]", key, i))
					}
				}
			}
		}
	}
	walk("", raw)
	return errors.Join(errs...)
}

// joinKeyErrors joins first and then, leaving out the errors of then whose
// key first already names (a plugin entry's decoder finds the unknown keys
// of its map again).
func joinKeyErrors(first, then error) error {
	named := map[string]bool{}
	for _, e := range flatten(first) {
		var ke *KeyError
		if errors.As(e, &ke) {
			named[ke.Key] = true
		}
	}
	errs := flatten(first)
	for _, e := range flatten(then) {
		var ke *KeyError
		if errors.As(e, &ke) && named[ke.Key] {
			continue
		}
		errs = append(errs, e)
	}
	return errors.Join(errs...)
}

// flatten lists the errors an errors.Join holds (err itself otherwise).
func flatten(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// envKey maps CALLBACKD_NATS__URL to nats.url.
func envKey(name string) string {
	parts := strings.Split(strings.TrimPrefix(name, EnvPrefix), "__")
	for i, p := range parts {
		// A plugin's environment variable keeps its case
		// (CALLBACKD_PLUGINS__TRANSPORT__ENV__API_KEY sets API_KEY, as the
		// file's env: {API_KEY: …} does); every other part is a key.
		if i < 2 || parts[0] != "plugins" || parts[i-1] != "env" {
			parts[i] = strings.ToLower(p)
		}
	}
	return strings.Join(parts, ".")
}

func unknownEnvWarning(name, key string) string {
	msg := "config: unknown environment variable " + name + " ignored"
	if guess := strings.ReplaceAll(key, "_", "."); guess != key {
		if _, ok := settable(guess); ok {
			msg += " (did you mean " + EnvPrefix + strings.ToUpper(strings.ReplaceAll(guess, ".", "__")) + "?)"
		}
	}
	return msg
}

// oneDocument is the YAML parser, refusing a file of several documents:
// koanf reads the first one alone, and keys after a "---" (unknown ones
// included) would be dropped without a word.
type oneDocument struct{ koanf.Parser }

func (p oneDocument) Unmarshal(b []byte) (map[string]any, error) {
	dec := yamlv3.NewDecoder(bytes.NewReader(b))
	for n := 0; ; n++ {
		var doc yamlv3.Node
		if err := dec.Decode(&doc); err != nil {
			break // io.EOF, or a syntax error the parser below reports
		}
		if n > 0 && !emptyDocument(&doc) {
			return nil, errors.New(`holds more than one YAML document (keys after a "---" line): callbackd reads one; put every key in it`)
		}
	}
	return p.Parser.Unmarshal(b)
}

// emptyDocument reports whether doc holds nothing but comments or null.
func emptyDocument(doc *yamlv3.Node) bool {
	for _, c := range doc.Content {
		if c.Kind != yamlv3.ScalarNode || c.Tag != "!!null" {
			return false
		}
	}
	return true
}

// envValue types an environment string for a key of type t the way YAML
// would have: ints and bools parsed, lists split on commas ("10s, 1m,5m",
// or "[10s, 1m, 5m]" as in the file).
// Durations, sizes and plugin entries stay strings for the decode hooks; a
// value that does not parse stays a string so decoding names the key.
func envValue(t reflect.Type, v string) any {
	switch {
	case t == intType:
		if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
			return n
		}
	case t.Kind() == reflect.Bool:
		if b, err := strconv.ParseBool(strings.TrimSpace(v)); err == nil {
			return b
		}
	case t.Kind() == reflect.Slice:
		// YAML's flow form ("[1s, 2s]", quotes and all) is taken too: it is
		// what the file says, and what people copy from it.
		v = strings.TrimSpace(v)
		if inner, ok := strings.CutPrefix(v, "["); ok {
			if inner, ok = strings.CutSuffix(inner, "]"); ok {
				v = strings.TrimSpace(inner)
			}
		}
		if v == "" {
			return []string{}
		}
		parts := strings.Split(v, ",")
		for i, p := range parts {
			p = strings.TrimSpace(p)
			if len(p) >= 2 && (p[0] == '"' || p[0] == '\'') && p[len(p)-1] == p[0] {
				p = p[1 : len(p)-1]
			}
			parts[i] = p
		}
		return parts
	}
	return v
}

// durationHook decodes Go duration syntax ("30s") and rejects bare numbers,
// which would otherwise silently become nanoseconds.
func durationHook(from, to reflect.Type, data any) (any, error) {
	if to != durationType || from == durationType {
		return data, nil
	}
	switch from.Kind() {
	case reflect.String:
		s := reflect.ValueOf(data).String()
		d, err := time.ParseDuration(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("invalid duration %q", s)
		}
		return d, nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64:
		return nil, fmt.Errorf("invalid duration %v (want Go syntax such as \"30s\")", data)
	}
	return data, nil
}

// oneLine joins a multi-line error (the YAML parser puts each of its
// errors on a line of its own) into one line, keeping what each line says.
func oneLine(err error) error {
	if !strings.Contains(err.Error(), "\n") {
		return err
	}
	parts := strings.Fields(strings.ReplaceAll(err.Error(), "\n", " "))
	return errors.New(strings.Join(parts, " "))
}

// integerHook refuses a number with a fraction for an integer key, which
// mapstructure would truncate (`workers: 8.5` → 8): a whole float, as YAML
// may give 8 or 8.0, is taken.
//
// It also refuses a number too large for the key, which mapstructure would
// wrap around (`workers: 99999999999999999999` → a negative count).
func integerHook(from, to reflect.Type, data any) (any, error) {
	switch to.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
	default:
		return data, nil
	}
	v := reflect.ValueOf(data)
	switch from.Kind() {
	case reflect.Float32, reflect.Float64:
		f := v.Float()
		if f != math.Trunc(f) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("want a whole number, got %v", data)
		}
		// 2^63 itself is out of range: float64 holds it exactly.
		if f >= math.MaxInt64 || f < math.MinInt64 || reflect.Zero(to).OverflowInt(int64(f)) {
			return nil, fmt.Errorf("too large: %v", data)
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if u := v.Uint(); u > math.MaxInt64 || reflect.Zero(to).OverflowInt(int64(u)) {
			return nil, fmt.Errorf("too large: %v", data)
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if reflect.Zero(to).OverflowInt(v.Int()) {
			return nil, fmt.Errorf("too large: %v", data)
		}
	}
	return data, nil
}

// errPluginForm is the problem with a plugin entry of the wrong shape.
var errPluginForm = errors.New(`want "builtin:<name>" or a map {path, sha256, args, env}`)

// pluginEntryHook decodes both forms of a plugin entry: "builtin:<name>" and
// {path, sha256, args, env}. It builds a fresh PluginEntry so that a map
// never merges into a default built-in.
func pluginEntryHook(_, to reflect.Type, data any) (any, error) {
	if to != pluginEntryType {
		return data, nil
	}
	switch v := data.(type) {
	case PluginEntry:
		return v, nil
	case string:
		name, ok := strings.CutPrefix(v, "builtin:")
		if !ok {
			return nil, fmt.Errorf("%q: %w", v, errPluginForm)
		}
		return PluginEntry{Builtin: name}, nil
	case map[string]any:
		return decodePluginMap(v)
	default:
		return nil, fmt.Errorf("got %s: %w", kindOf(v), errPluginForm)
	}
}

func decodePluginMap(m map[string]any) (PluginEntry, error) {
	var e PluginEntry
	for _, k := range slices.Sorted(maps.Keys(m)) {
		v := m[k]
		switch k {
		case "path", "sha256":
			s, ok := v.(string)
			if !ok {
				return e, &fieldError{k, fmt.Errorf("want a string, got %s", kindOf(v))}
			}
			if k == "path" {
				e.Path = s
			} else {
				e.SHA256 = s
			}
		case "args":
			list, err := stringList(v)
			if err != nil {
				return e, &fieldError{k, err}
			}
			e.Args = list
		case "env":
			env, err := stringMap(v)
			if err != nil {
				return e, &fieldError{k, err}
			}
			e.Env = env
		default:
			return e, &fieldError{k, ErrUnknownKey}
		}
	}
	return e, nil
}

func stringList(v any) ([]string, error) {
	switch l := v.(type) {
	case nil:
		return nil, nil
	case []string:
		return l, nil
	case []any:
		out := make([]string, len(l))
		for i, x := range l {
			s, ok := scalarString(x)
			if !ok {
				return nil, &fieldError{fmt.Sprintf("[%d]", i), fmt.Errorf("want a string, got %s", kindOf(x))}
			}
			out[i] = s
		}
		return out, nil
	}
	return nil, fmt.Errorf("want a list, got %s", kindOf(v))
}

func stringMap(v any) (map[string]string, error) {
	switch m := v.(type) {
	case nil:
		return nil, nil
	case map[string]any:
		out := make(map[string]string, len(m))
		for k, x := range m {
			s, ok := scalarString(x)
			if !ok {
				return nil, &fieldError{k, fmt.Errorf("want a string, got %s", kindOf(x))}
			}
			out[k] = s
		}
		return out, nil
	}
	return nil, fmt.Errorf("want a map, got %s", kindOf(v))
}

// scalarString accepts what YAML may make of an unquoted argument (8080, true).
func scalarString(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case int, int64, uint64, float64, bool:
		return fmt.Sprint(x), true
	}
	return "", false
}

// fieldError locates a problem below the key being decoded ("sha256" below
// "plugins.transport").
type fieldError struct {
	key string
	err error
}

func (e *fieldError) Error() string { return e.key + ": " + e.err.Error() }
func (e *fieldError) Unwrap() error { return e.err }

// keyErrors turns mapstructure's errors into KeyErrors named by the dotted
// key, with messages for people rather than for Go types.
func keyErrors(err error) error {
	var out []error
	var walk func(error)
	walk = func(err error) {
		de, ok := err.(*mapstructure.DecodeError)
		if !ok {
			if j, ok := err.(interface{ Unwrap() []error }); ok {
				for _, e := range j.Unwrap() {
					walk(e)
				}
			} else if inner := errors.Unwrap(err); inner != nil {
				walk(inner) // "decoding failed due to the following error(s)"
			} else {
				out = append(out, &KeyError{Err: err})
			}
			return
		}
		key, cause := keyName(de.Name()), de.Unwrap()
		for {
			fe, ok := cause.(*fieldError)
			if !ok {
				break
			}
			if strings.HasPrefix(fe.key, "[") {
				key += fe.key
			} else {
				key += "." + fe.key
			}
			cause = fe.err
		}
		out = append(out, &KeyError{Key: key, Err: humanize(cause)})
	}
	walk(err)
	return errors.Join(out...)
}

// keyName writes mapstructure's "plugins.encoders[crawl_status]" as the key
// it is in the file, "plugins.encoders.crawl_status"; list indexes keep [i].
func keyName(name string) string {
	const m = "plugins.encoders["
	if rest, ok := strings.CutPrefix(name, m); ok {
		if i := strings.IndexByte(rest, ']'); i >= 0 {
			return "plugins.encoders." + rest[:i] + rest[i+1:]
		}
	}
	return name
}

func humanize(err error) error {
	var ue *mapstructure.UnconvertibleTypeError
	if errors.As(err, &ue) {
		return fmt.Errorf("want %s, got %s", typeWords(ue.Expected.Type()), kindOf(ue.Value))
	}
	// mapstructure's words for a scalar where a list belongs.
	if msg := err.Error(); strings.HasPrefix(msg, "source data must be an array or slice, got ") {
		return errors.New("want a list, got " + kindOfKind(strings.TrimPrefix(msg, "source data must be an array or slice, got ")))
	}
	return err
}

// typeWords names a config type as a reader of the file would, not as Go
// does ("config.Size").
func typeWords(t reflect.Type) string {
	switch {
	case t == reflect.TypeFor[Size]():
		return "a size (256KiB, 1MiB or bytes)"
	case t == durationType:
		return "a duration (30s, 5m)"
	case t == pluginEntryType:
		return `a plugin entry ("builtin:<name>" or {path, sha256})`
	case t == intType:
		return "a whole number"
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice:
		return "a list"
	case reflect.Map, reflect.Struct:
		return "a map of keys"
	}
	return t.String()
}

// kindOfKind turns a reflect.Kind's name as mapstructure prints it into
// kindOf's words.
func kindOfKind(k string) string {
	switch k {
	case "string":
		return "a string"
	case "bool":
		return "a boolean"
	case "int", "int64", "uint64", "float64":
		return "a number"
	case "map":
		return "a map"
	}
	return k
}

// kindOf describes a decoded YAML value for an error message.
func kindOf(v any) string {
	if v == nil {
		return "nothing"
	}
	switch reflect.ValueOf(v).Kind() {
	case reflect.Map:
		return "a map"
	case reflect.Slice, reflect.Array:
		return "a list"
	case reflect.String:
		return fmt.Sprintf("%q", v)
	default:
		return fmt.Sprintf("%v", v)
	}
}
