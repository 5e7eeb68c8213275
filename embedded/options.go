package embedded

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Options configure the embedded server. The zero value of every field but
// DataDir is usable: a single node, in-process only, no authentication.
type Options struct {
	// DataDir holds the JetStream store (DataDir/jetstream) and the server
	// name file. Required.
	DataDir string
	// Listen is the client listener as host:port; "" means in-process only
	// (no TCP listener). Port 0 picks a free port.
	Listen string
	// ServerName is the server's name; empty means one generated on first
	// start and kept in DataDir/server_name, so it is stable across restarts
	// (JetStream clustering needs a unique, stable name per node).
	ServerName string
	// Auth, when set, is required of every client, callbackd's own
	// in-process connection included (Connect supplies it), and of the
	// cluster's routes.
	Auth Auth
	// TLS secures the client listener. With CA set, the listener also
	// requires client certificates signed by it. The in-process connection
	// needs no TLS.
	TLS TLSFiles
	// Cluster makes the server a node of a JetStream cluster when its Listen
	// is set.
	Cluster Cluster
	// ReadyTimeout bounds the wait for the server to accept clients (0 → 10s).
	ReadyTimeout time.Duration
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
	// Debug turns on the server's debug logs.
	Debug bool
}

// Auth is user/password or token authentication; the zero value is none.
type Auth struct {
	User     string
	Password string
	Token    string
}

// IsSet reports whether authentication is configured.
func (a Auth) IsSet() bool { return a.User != "" || a.Token != "" }

// routeUser is the user name routes authenticate with when only a token is
// configured: route authentication is user/password only.
const routeUser = "callbackd"

// routeCredentials are what routes present and require: the client user and
// password, or routeUser and the token.
func (a Auth) routeCredentials() (user, password string) {
	if a.User != "" {
		return a.User, a.Password
	}
	return routeUser, a.Token
}

// TLSFiles are PEM files; the zero value means no TLS.
type TLSFiles struct {
	Cert string
	Key  string
	CA   string
}

// IsSet reports whether a certificate is configured.
func (f TLSFiles) IsSet() bool { return f.Cert != "" || f.Key != "" }

// Cluster is the embedded server's part in a JetStream cluster.
type Cluster struct {
	// Name is the cluster's name, the same on every node ("" → "callbackd").
	Name string
	// Listen is the route listener as host:port; "" means no cluster.
	Listen string
	// Routes are every node's route URL (nats://host:port); the node's own
	// is allowed, so every node can share one list. Credentials are added
	// from Options.Auth when a URL has none.
	Routes []string
	// TLS secures the routes. Both ends present their certificate and verify
	// the other's against CA, which is required.
	TLS TLSFiles
}

// DefaultClusterName is the cluster name when Cluster.Name is empty.
const DefaultClusterName = "callbackd"

// tlsTimeout is the TLS handshake timeout of the listeners, in seconds (the
// server's default of 2 s is short for a loaded 2-core box).
const tlsTimeout = 5

// serverOptions translates Options into the server's.
func (o Options) serverOptions(name string) (*server.Options, error) {
	opts := &server.Options{
		ServerName: name,
		JetStream:  true,
		StoreDir:   o.DataDir, // the server adds "jetstream/"
		NoSigs:     true,      // callbackd owns SIGINT/SIGTERM
		Debug:      o.Debug,
		// A lost route is retried every second; the server's default
		// reports every failed attempt (one line per route connection,
		// several per peer, each second). Once a minute says as much.
		ReconnectErrorReports: 60,
	}
	if o.Listen == "" {
		opts.DontListen = true
	} else {
		host, port, err := splitHostPort(o.Listen)
		if err != nil {
			return nil, fmt.Errorf("listen %q: %w", o.Listen, err)
		}
		opts.Host, opts.Port = host, port
		if port == 0 {
			opts.Port = server.RANDOM_PORT
		}
	}
	if err := o.Auth.apply(opts); err != nil {
		return nil, err
	}
	if o.TLS.IsSet() || o.TLS.CA != "" {
		if o.TLS.Cert == "" || o.TLS.Key == "" {
			return nil, errors.New("tls: the listener needs both cert and key")
		}
		tc, err := server.GenTLSConfig(&server.TLSConfigOpts{
			CertFile: o.TLS.Cert, KeyFile: o.TLS.Key, CaFile: o.TLS.CA,
			Verify: o.TLS.CA != "",
		})
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		opts.TLSConfig, opts.TLS, opts.TLSVerify, opts.TLSTimeout = tc, true, o.TLS.CA != "", tlsTimeout
	}
	if o.Cluster.Listen != "" {
		if err := o.Cluster.apply(opts, o.Auth); err != nil {
			return nil, err
		}
	} else if len(o.Cluster.Routes) > 0 || o.Cluster.TLS.IsSet() {
		return nil, errors.New("cluster: routes and tls need a cluster listen address")
	}
	return opts, nil
}

func (a Auth) apply(opts *server.Options) error {
	switch {
	case a.User != "" && a.Token != "":
		return errors.New("auth: set user and password, or a token, not both")
	case a.User != "":
		if a.Password == "" {
			return errors.New("auth: user needs a password")
		}
		opts.Username, opts.Password = a.User, a.Password
	case a.Password != "":
		return errors.New("auth: password needs a user")
	case a.Token != "":
		opts.Authorization = a.Token
	}
	return nil
}

func (c Cluster) apply(opts *server.Options, auth Auth) error {
	host, port, err := splitHostPort(c.Listen)
	if err != nil {
		return fmt.Errorf("cluster listen %q: %w", c.Listen, err)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	name := c.Name
	if name == "" {
		name = DefaultClusterName
	}
	if len(c.Routes) == 0 {
		// The server would start without JetStream ("JetStream cluster
		// requires configured routes"); say so up front.
		return errors.New("cluster: routes must list the cluster's nodes (this one's may be among them)")
	}
	opts.Cluster = server.ClusterOpts{Name: name, Host: host, Port: port}
	if auth.IsSet() {
		opts.Cluster.Username, opts.Cluster.Password = auth.routeCredentials()
	}
	for i, r := range c.Routes {
		u, err := url.Parse(r)
		if err != nil || u.Host == "" {
			return fmt.Errorf("cluster route %d (%q) is not a URL such as nats://host:6222", i, r)
		}
		if u.User == nil && auth.IsSet() {
			u.User = url.UserPassword(opts.Cluster.Username, opts.Cluster.Password)
		}
		opts.Routes = append(opts.Routes, u)
	}
	if c.TLS.IsSet() || c.TLS.CA != "" {
		if c.TLS.Cert == "" || c.TLS.Key == "" || c.TLS.CA == "" {
			return errors.New("cluster tls: cert, key and ca are all required (routes verify each other against ca)")
		}
		tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: c.TLS.Cert, KeyFile: c.TLS.Key, CaFile: c.TLS.CA})
		if err != nil {
			return fmt.Errorf("cluster tls: %w", err)
		}
		// A route is a client of the node it dials and a server to the
		// node that dials it: verify both ways, as the server's own config
		// parser does for cluster TLS.
		tc.ClientAuth = tls.RequireAndVerifyClientCert
		tc.RootCAs = tc.ClientCAs
		opts.Cluster.TLSConfig, opts.Cluster.TLSTimeout = tc, tlsTimeout
	}
	return nil
}

func splitHostPort(hp string) (string, int, error) {
	host, p, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("port %q is not a number from 0 to 65535", p)
	}
	if host == "" {
		host = "0.0.0.0"
	}
	return host, port, nil
}
