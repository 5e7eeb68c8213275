package host

import (
	"context"
	"testing"

	"github.com/callbackd/callbackd/plugins"
	"github.com/callbackd/callbackd/plugins/builtin"
	"github.com/callbackd/callbackd/plugins/plugintest"
)

// TestConformance_builtins_as_a_process runs the conformance suites
// against the built-in plugins served from their own process, through the
// manager: the same suites plugins/builtin runs in-process.
func TestConformance_builtins_as_a_process(t *testing.T) {
	m := newManager(t, Options{})
	p, err := m.Launch(context.Background(), selfSpec(t, "builtin", plugins.PluginEncoder, plugins.PluginTransport, plugins.PluginFailure))
	if err != nil {
		t.Fatal(err)
	}
	guarded, err := m.Launch(context.Background(), selfSpec(t, "builtin-guarded", plugins.PluginTransport))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range builtin.EncoderNames() {
		t.Run(name, func(t *testing.T) {
			enc, _, err := p.Encoder(name)
			if err != nil {
				t.Fatal(err)
			}
			plugintest.TestEncoder(t, func(*testing.T) plugins.Encoder { return enc }, plugintest.BuiltinEncoderCases(name))
		})
	}
	t.Run("http-form", func(t *testing.T) {
		tr, _ := p.Transport()
		gtr, _ := guarded.Transport()
		plugintest.TestTransport(t, func(*testing.T) plugins.Transport { return tr },
			plugintest.TransportOptions{Guarded: func(*testing.T) plugins.Transport { return gtr }})
	})
	t.Run("sso-webhook", func(t *testing.T) {
		fh, _ := p.Failure()
		plugintest.TestFailure(t, func(*testing.T) plugins.FailureHandler { return fh }, plugintest.BuiltinFailureCases())
	})
}
