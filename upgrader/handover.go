package upgrader

import (
	"github.com/cloudflare/tableflip"
	"github.com/gohandoff/handoff/internal/handover"
)

// newHandover starts the handover of a service (internal/handover):
// handover.New, which makes a generation started by an upgrade inherit its
// parent's sockets; the unit tests give New a fake (handover_test.go), so
// that New, Listen, markReady and Stop run in the test process, where
// tableflip allows only one Upgrader for good.
type newHandover func(opts tableflip.Options, hasParent bool) (handover.Handover, error)
