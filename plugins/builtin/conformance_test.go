package builtin_test

import (
	"testing"

	"github.com/callbackd/callbackd/plugins"
	"github.com/callbackd/callbackd/plugins/builtin"
	"github.com/callbackd/callbackd/plugins/plugintest"
)

// The conformance suites against the built-ins in-process; plugins/host
// runs them against the same built-ins in their own process.

func TestConformance_encoders(t *testing.T) {
	for name, enc := range builtin.Encoders() {
		t.Run(name, func(t *testing.T) {
			// A suite with no cases would pass without checking anything.
			if len(plugintest.BuiltinEncoderCases(name)) == 0 {
				t.Fatalf("no conformance cases for built-in encoder %q", name)
			}
			plugintest.TestEncoder(t, func(*testing.T) plugins.Encoder { return enc }, plugintest.BuiltinEncoderCases(name))
		})
	}
}

func TestConformance_http_form(t *testing.T) {
	plugintest.TestTransport(t, func(t *testing.T) plugins.Transport {
		tr := builtin.NewHTTPForm(builtin.HTTPFormOptions{UserAgent: "callbackd/test", Guard: plugins.NewGuard(true, nil)})
		t.Cleanup(tr.Close)
		return tr
	}, plugintest.TransportOptions{
		Guarded: func(t *testing.T) plugins.Transport {
			tr := builtin.NewHTTPForm(builtin.HTTPFormOptions{UserAgent: "callbackd/test"})
			t.Cleanup(tr.Close)
			return tr
		},
	})
}

func TestConformance_sso_webhook(t *testing.T) {
	if len(plugintest.BuiltinFailureCases()) == 0 {
		t.Fatal("no conformance cases for sso-webhook")
	}
	plugintest.TestFailure(t, func(*testing.T) plugins.FailureHandler { return builtin.NewSSOWebhook() }, plugintest.BuiltinFailureCases())
}
