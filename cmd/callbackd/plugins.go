package main

import (
	"errors"
	"fmt"

	"github.com/callbackd/callbackd/config"
	"github.com/callbackd/callbackd/plugins"
	"github.com/callbackd/callbackd/plugins/builtin"
)

// buildEncoders maps each configured event type to its encoder.
func buildEncoders(cfg *config.Config) (map[string]plugins.Encoder, error) {
	builtins := builtin.Encoders()
	out := make(map[string]plugins.Encoder, len(cfg.Plugins.Encoders))
	for eventType, entry := range cfg.Plugins.Encoders {
		if entry.Builtin == "" {
			return nil, fmt.Errorf("plugins.encoders.%s: third-party plugin %q: not supported by this build yet", eventType, entry.Path)
		}
		enc, ok := builtins[entry.Builtin]
		if !ok {
			return nil, fmt.Errorf("plugins.encoders.%s: no built-in encoder %q (built-ins: %v)", eventType, entry.Builtin, builtin.EncoderNames())
		}
		out[eventType] = enc
	}
	return out, nil
}

// buildTransport returns the configured transport.
func buildTransport(cfg *config.Config) (*builtin.HTTPForm, error) {
	if cfg.Plugins.Transport.Builtin != builtin.HTTPFormName {
		return nil, errors.New("plugins.transport: only builtin:http-form is supported by this build yet")
	}
	return builtin.NewHTTPForm(builtin.HTTPFormOptions{
		Timeout:   cfg.Delivery.Timeout,
		UserAgent: "callbackd/" + version,
		Guard:     plugins.NewGuard(cfg.Delivery.AllowPrivate, cfg.AllowCIDRs()),
	}), nil
}
