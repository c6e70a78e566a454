package load

import (
	"testing"
	"time"
)

func TestWindow(t *testing.T) {
	t.Parallel()
	var r Result
	for i := range 100 {
		// One request every 10 ms; the ones in [500ms, 600ms) are slow.
		at := time.Duration(i) * 10 * time.Millisecond
		lat := time.Millisecond
		if at >= 500*time.Millisecond && at < 600*time.Millisecond {
			lat = 100 * time.Millisecond
		}
		r.samples = append(r.samples, sample{at: at, lat: lat})
	}
	tests := []struct {
		name     string
		from, to time.Duration
		n        int
		p99      time.Duration
	}{
		{"slow window", 500 * time.Millisecond, 600 * time.Millisecond, 10, 100 * time.Millisecond},
		{"fast window", 0, 500 * time.Millisecond, 50, time.Millisecond},
		{"empty", 2 * time.Second, 3 * time.Second, 0, 0},
		{"reversed", 600 * time.Millisecond, 500 * time.Millisecond, 0, 0},
	}
	for _, tt := range tests {
		n, _, p99 := r.Window(tt.from, tt.to)
		if n != tt.n || p99 != tt.p99 {
			t.Errorf("%s: Window = %d requests, p99 %s; want %d, %s", tt.name, n, p99, tt.n, tt.p99)
		}
	}
}
