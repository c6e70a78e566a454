package upgrader_test

import (
	"context"
	"errors"
	"log/slog"

	"github.com/gohandoff/handoff/upgrader"
)

// An upgrade that fails leaves this generation serving; the error says
// why in one line and carries what the new generation printed last.
func ExampleUpgradeError() {
	upg, err := upgrader.New(upgrader.Options{})
	if err != nil {
		slog.Error("start", "err", err)
		return
	}
	defer upg.Stop()
	_, err = upg.Upgrade(context.Background())
	var ue *upgrader.UpgradeError
	if errors.As(err, &ue) {
		slog.Error("upgrade failed, still serving", "err", ue.Err, "stderr", ue.Stderr)
	}
}
