package host

import "errors"

// ErrRefused is returned (wrapped) when a plugin may not be launched: its
// file is missing or not a regular file, its checksum does not match the
// configured one, or plugins.dir is group- or world-writable. The message
// names the plugin and the reason.
var ErrRefused = errors.New("plugin refused")

// ErrIncompatible is returned (wrapped) when a plugin started but does not
// speak callbackd's plugin protocol: another protocol version, another
// handshake cookie (not a callbackd plugin), or a kind it was configured
// for and does not serve.
var ErrIncompatible = errors.New("plugin incompatible")

// ErrClosed is returned (wrapped) by calls made after the manager closed.
var ErrClosed = errors.New("plugin manager closed")
