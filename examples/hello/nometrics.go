//go:build nometrics

package main

import "github.com/gohandoff/handoff/upgrader"

// serveMetrics is nil: this build has no metrics, and --metrics is refused.
var serveMetrics func(upg *upgrader.Upgrader, addr string) error
