package upgrader

import (
	"fmt"
	"sync/atomic"
)

// phase is where a generation is in its life. Every change goes through
// phaseState.to, which allows only the moves of phaseMoves:
//
//	starting ──► ready ◄──► upgrading ──► draining
//	    │          │
//	    └──────────┴──► stopping
//
// A worker process goes from starting to ready to stopping. draining (the
// generation handed over) and stopping (a final stop) are ends: neither
// leaves, so a late ready or upgrade cannot take a generation that drains
// back to serving.
type phase int32

const (
	phaseStarting  phase = iota // not ready yet
	phaseReady                  // serving; may upgrade
	phaseUpgrading              // a new generation is starting from this one
	phaseDraining               // handed over to a new generation, draining
	phaseStopping               // stopping for good, draining
)

var phaseNames = [...]string{
	phaseStarting:  "starting",
	phaseReady:     "ready",
	phaseUpgrading: "upgrading",
	phaseDraining:  "draining",
	phaseStopping:  "stopping",
}

// String is the phase as the control socket's status and the metrics
// name it.
func (p phase) String() string {
	if p < 0 || int(p) >= len(phaseNames) {
		return fmt.Sprintf("phase(%d)", int32(p))
	}
	return phaseNames[p]
}

// phaseMoves[from] lists the phases from may move to.
var phaseMoves = [...][]phase{
	phaseStarting:  {phaseReady, phaseStopping},
	phaseReady:     {phaseUpgrading, phaseStopping},
	phaseUpgrading: {phaseReady, phaseDraining},
	phaseDraining:  nil,
	phaseStopping:  nil,
}

// may reports whether a generation in phase p may move to next.
func (p phase) may(next phase) bool {
	if p < 0 || int(p) >= len(phaseMoves) {
		return false
	}
	for _, q := range phaseMoves[p] {
		if q == next {
			return true
		}
	}
	return false
}

// phaseState holds a generation's phase. Its zero value is phaseStarting.
// Reads are lock-free; a move is a compare-and-swap, so two racing moves
// cannot both leave the same phase.
type phaseState struct{ v atomic.Int32 }

func (s *phaseState) get() phase { return phase(s.v.Load()) }

// to moves to next if the current phase allows it, and returns the phase
// it found and whether it moved.
func (s *phaseState) to(next phase) (from phase, moved bool) {
	for {
		from = s.get()
		if !from.may(next) {
			return from, false
		}
		if s.v.CompareAndSwap(int32(from), int32(next)) {
			return from, true
		}
	}
}
