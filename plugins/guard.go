package plugins

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// NotAllowedError is the policy's refusal of one address: Guard.Allowed
// returns it, and a dial the Guard refused wraps it. It wraps
// ErrDestinationNotAllowed. Its text names the IP and the range; a
// transport that refused a host name rather than a literal IP may prefer
// to say only the range's Name, since the address a name resolves to is
// internal information.
type NotAllowedError struct {
	// IP is the refused address, without a zone.
	IP netip.Addr
	// Range is the refused range that holds IP (its IPv4 form when IP is
	// IPv4-mapped IPv6).
	Range netip.Prefix
	// Name is the range's name: "loopback", "private", "link-local"…
	Name string
}

func (e *NotAllowedError) Error() string {
	if v4 := e.IP.Unmap(); v4 != e.IP {
		return fmt.Sprintf("%v: %s (IPv4-mapped %s) is in %s (%s)", ErrDestinationNotAllowed, e.IP, v4, e.Range, e.Name)
	}
	if v4, form, ok := embeddedIPv4(e.IP); ok && e.Range.Contains(v4) {
		return fmt.Sprintf("%v: %s (%s %s) is in %s (%s)", ErrDestinationNotAllowed, e.IP, form, v4, e.Range, e.Name)
	}
	return fmt.Sprintf("%v: %s is in %s (%s)", ErrDestinationNotAllowed, e.IP, e.Range, e.Name)
}

// ipv4Compatible, siit and sixToFour are IPv6 forms that carry an IPv4
// address, and on a host with the matching tunnel or translator reach it.
var (
	ipv4Compatible = netip.MustParsePrefix("::/96")
	siit           = netip.MustParsePrefix("::ffff:0:0:0/96")
	sixToFour      = netip.MustParsePrefix("2002::/16")
)

// embeddedIPv4 returns the IPv4 address that ip, an IPv4-compatible
// (::a.b.c.d), SIIT (::ffff:0:a.b.c.d) or 6to4 (2002:aabb:ccdd::/48)
// address, carries, and the form's name. "::" and "::1" are not taken for
// IPv4-compatible: they are IPv6's own unspecified and loopback addresses.
func embeddedIPv4(ip netip.Addr) (netip.Addr, string, bool) {
	if !ip.Is6() || ip.Is4In6() {
		return netip.Addr{}, "", false
	}
	b := ip.As16()
	switch {
	case ipv4Compatible.Contains(ip) && ip != netip.IPv6Unspecified() && ip != netip.IPv6Loopback():
		return netip.AddrFrom4([4]byte(b[12:16])), "IPv4-compatible", true
	case siit.Contains(ip):
		return netip.AddrFrom4([4]byte(b[12:16])), "SIIT", true
	case sixToFour.Contains(ip):
		return netip.AddrFrom4([4]byte(b[2:6])), "6to4", true
	}
	return netip.Addr{}, "", false
}

// Unwrap returns ErrDestinationNotAllowed.
func (e *NotAllowedError) Unwrap() error { return ErrDestinationNotAllowed }

// refusedRange is one range of the default policy, with the name used in
// error messages.
type refusedRange struct {
	prefix netip.Prefix
	name   string
}

// refusedRanges are refused unless the policy allows private addresses or
// an allowed CIDR covers the address. The first block is SPEC §3's list; the
// second holds ranges that are equally unreachable from the Internet and
// equally able to reach inside a network, so refusing them keeps the
// policy's intent.
var refusedRanges = []refusedRange{
	{netip.MustParsePrefix("0.0.0.0/8"), "this network"},
	{netip.MustParsePrefix("10.0.0.0/8"), "private"},
	{netip.MustParsePrefix("100.64.0.0/10"), "CGNAT"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local"},
	{netip.MustParsePrefix("172.16.0.0/12"), "private"},
	{netip.MustParsePrefix("192.0.0.0/24"), "IETF protocol assignments"},
	{netip.MustParsePrefix("192.168.0.0/16"), "private"},
	{netip.MustParsePrefix("198.18.0.0/15"), "benchmarking"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
	{netip.MustParsePrefix("255.255.255.255/32"), "broadcast"},
	{netip.MustParsePrefix("::/128"), "unspecified"},
	{netip.MustParsePrefix("::1/128"), "loopback"},
	{netip.MustParsePrefix("64:ff9b::/96"), "NAT64"},
	{netip.MustParsePrefix("fc00::/7"), "private"},
	{netip.MustParsePrefix("fe80::/10"), "link-local"},
	{netip.MustParsePrefix("ff00::/8"), "multicast"},

	{netip.MustParsePrefix("240.0.0.0/4"), "reserved"},
	{netip.MustParsePrefix("64:ff9b:1::/48"), "local-use NAT64"},
	{netip.MustParsePrefix("fec0::/10"), "site-local"},
}

// Guard is the outbound-safety policy of SPEC §3: it refuses connections to
// loopback, private, link-local, CGNAT, benchmarking, multicast, unspecified,
// broadcast and NAT64 addresses, and to IPv4-mapped IPv6 forms of any of
// them (and the IPv4-compatible, SIIT and 6to4 forms, which tunnels and
// translators carry to the same IPv4 address), unless private addresses are
// allowed or an allowed CIDR covers the address. Its DialContext checks the address each socket is about to
// connect to, after DNS resolution, so a name that resolves (or re-resolves)
// to a refused address is refused too.
//
// A Guard is immutable and safe for concurrent use. Third-party transports
// should make their connections through DialContext.
type Guard struct {
	allowPrivate bool
	allow        []netip.Prefix
	dialer       net.Dialer
}

// NewGuard returns the policy. allowPrivate lifts every refusal
// (delivery.allow_private); allowCIDRs exempt the ranges they cover
// (delivery.allow_cidrs) and match an IPv4-mapped IPv6 address by its IPv4
// form too. An IPv4-mapped prefix (::ffff:127.0.0.0/104) exempts the IPv4
// addresses it maps as well: Go dials [::ffff:127.0.0.1] over IPv4, so the
// dial sees 127.0.0.1. Invalid prefixes are ignored: config validation
// rejects them.
func NewGuard(allowPrivate bool, allowCIDRs []netip.Prefix) *Guard {
	g := &Guard{allowPrivate: allowPrivate}
	for _, p := range allowCIDRs {
		if !p.IsValid() {
			continue
		}
		p = p.Masked()
		g.allow = append(g.allow, p)
		if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
			g.allow = append(g.allow, netip.PrefixFrom(a.Unmap(), p.Bits()-96))
		}
	}
	g.dialer = net.Dialer{
		KeepAlive: 30 * time.Second,
		Control:   g.control,
	}
	return g
}

// Allowed returns nil when the policy lets callbackd connect to ip, else an
// error wrapping ErrDestinationNotAllowed that names the IP and the range
// (a *NotAllowedError when a refused range holds ip).
// A zone (fe80::1%eth0) is ignored; an IPv4-mapped IPv6 address is judged
// by its IPv4 form. The zero Addr is always refused.
func (g *Guard) Allowed(ip netip.Addr) error {
	if !ip.IsValid() {
		return fmt.Errorf("%w: not an IP address", ErrDestinationNotAllowed)
	}
	if g.allowPrivate {
		return nil
	}
	// Prefix.Contains never matches a zoned address, so the zone must go
	// before any comparison, or fe80::1%eth0 would slip through.
	ip = ip.WithZone("")
	v4 := ip.Unmap()
	// An IPv6 form that carries an IPv4 address is judged by that address
	// too: through a tunnel or translator it reaches it.
	inner, _, embedded := embeddedIPv4(ip)
	for _, p := range g.allow {
		if p.Contains(ip) || p.Contains(v4) || embedded && p.Contains(inner) {
			return nil
		}
	}
	for _, r := range refusedRanges {
		if r.prefix.Contains(v4) || embedded && r.prefix.Contains(inner) {
			return &NotAllowedError{IP: ip, Range: r.prefix, Name: r.name}
		}
	}
	return nil
}

// DialContext connects like net.Dialer.DialContext, refusing any address the
// policy refuses. The check runs on the resolved IP just before each socket
// connects (net.Dialer.Control), so it is safe against DNS rebinding; when a
// name resolves to several addresses, refused ones are skipped as if
// unreachable. Only IP networks (tcp, tcp4, tcp6, udp, udp4, udp6) are
// dialled; any other network is refused whatever the policy. A refusal is
// an error wrapping ErrDestinationNotAllowed (inside a *net.OpError).
func (g *Guard) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	switch network {
	case "tcp", "tcp4", "tcp6", "udp", "udp4", "udp6":
	default:
		return nil, &net.OpError{Op: "dial", Net: network, Err: fmt.Errorf("%w: network %q is not an IP network", ErrDestinationNotAllowed, network)}
	}
	return g.dialer.DialContext(ctx, network, addr)
}

// control is the net.Dialer Control hook: address is the resolved
// "ip:port" the socket is about to connect to.
func (g *Guard) control(network, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return fmt.Errorf("%w: cannot parse address %q", ErrDestinationNotAllowed, address)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("%w: %q is not an IP address", ErrDestinationNotAllowed, host)
	}
	return g.Allowed(ip)
}

// CheckURLHost returns an error wrapping ErrDestinationNotAllowed when host,
// a URL's host, is a literal IP address that the policy refuses; the API
// uses it to refuse such URLs when they are configured. host may carry a
// port and IPv6 brackets (url.URL.Host) or not (url.URL.Hostname()). The
// numeric IPv4 forms resolvers also accept (127.1, 0x7f000001, 2130706433,
// 0177.0.0.1) count as literal IPs. A host name returns nil: names are
// checked when dialled, on the address they resolve to then.
func (g *Guard) CheckURLHost(host string) error {
	h := host
	if strings.HasPrefix(h, "[") {
		if i := strings.LastIndexByte(h, ']'); i > 0 {
			h = h[1:i]
		}
	} else if strings.Count(h, ":") == 1 {
		h = h[:strings.IndexByte(h, ':')]
	}
	if ip, err := netip.ParseAddr(h); err == nil {
		return g.Allowed(ip)
	}
	if ip, ok := parseNumericIPv4(strings.TrimSuffix(h, ".")); ok {
		return g.Allowed(ip)
	}
	return nil
}

// parseNumericIPv4 parses the inet_aton forms of an IPv4 address: one to
// four dot-separated parts, each decimal, octal (leading 0) or hex (0x),
// the last part filling the remaining bytes.
func parseNumericIPv4(s string) (netip.Addr, bool) {
	if s == "" || s[0] < '0' || s[0] > '9' {
		// Every form starts with a digit: a host name costs one test.
		return netip.Addr{}, false
	}
	parts := strings.Split(s, ".")
	if len(parts) > 4 {
		return netip.Addr{}, false
	}
	var v uint64
	for i, p := range parts {
		base := 10
		switch {
		case len(p) > 2 && (p[:2] == "0x" || p[:2] == "0X"):
			base, p = 16, p[2:]
		case len(p) > 1 && p[0] == '0':
			base, p = 8, p[1:]
		}
		// With an explicit base ParseUint takes neither a sign nor
		// underscores, so only digits of that base pass.
		n, err := strconv.ParseUint(p, base, 32)
		if err != nil {
			return netip.Addr{}, false
		}
		if i < len(parts)-1 {
			if n > 0xff {
				return netip.Addr{}, false
			}
			v = v<<8 | n
			continue
		}
		rest := uint(4 - i) // bytes the last part fills
		if n >= 1<<(8*rest) {
			return netip.Addr{}, false
		}
		v = v<<(8*rest) | n
	}
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), true
}
