package upgrader

import (
	"context"
	"fmt"
	"os"
	"time"
)

// RollbackWindow is how long after a new generation became ready its
// worker processes are on probation: if a worker falls into a crash loop
// (CrashLoopDeaths deaths within CrashLoopWindow) meanwhile, the master
// rolls every worker back to the previous generation's build. A build that
// reports ready and then crashes under real traffic thus costs the
// requests its workers had in flight, not the service.
const RollbackWindow = time.Minute

// previousImage opens the executable image of the previous generation,
// pid, for a rollback of this generation's workers. It returns nil when
// there is none to roll back to: the previous generation ran this very
// build, or the system cannot name another process's image.
func previousImage(pid int) (*os.File, error) {
	f, err := openImage(pid)
	if err != nil {
		return nil, err
	}
	prev, err1 := f.Stat()
	own, err2 := os.Stat(ownImage(os.Args[0]))
	if err1 != nil || err2 != nil || os.SameFile(prev, own) {
		f.Close()
		return nil, err1
	}
	return f, nil
}

// rollbackLocked rolls the workers back to the previous build if slot id's
// crash loop began within RollbackWindow of this generation's ready and it
// was not rolled back already. It reports whether it did. The slot's
// replacement, and every later start, runs the previous build; a roll
// replaces the workers still running this build.
func (pp *procPool) rollbackLocked(id int) bool {
	sp := pp.spec
	if sp.prev == nil || sp.rolledBack() || pp.nready.At.IsZero() || time.Since(pp.nready.At) > RollbackWindow || pp.isDraining() {
		return false
	}
	img := imagePath(sp.prev)
	sp.rolled.Store(&img)
	pp.rollback = fmt.Sprintf("workers rolled back to the previous build at %s: worker %d in a crash loop %s after this generation was ready: %s",
		time.Now().Format(time.TimeOnly), id, time.Since(pp.nready.At).Round(time.Millisecond), pp.slots[id].LastErr)
	for i := range pp.slots {
		pp.slots[i].Forget()
	}
	pp.log.Error("WORKERS ROLLED BACK to the previous build: this build's workers crash-loop", "worker", id,
		"deaths", CrashLoopDeaths, "after_ready", time.Since(pp.nready.At).Round(time.Millisecond), "err", pp.slots[id].LastErr)
	if pp.onRollback != nil {
		go pp.onRollback()
	}
	return true
}

// rollBackWorkers replaces the workers that still run this generation's
// build after a rollback (see procPool.rollbackLocked).
func (u *Upgrader) rollBackWorkers() {
	ctx, cancel := context.WithTimeout(context.Background(), u.opts.UpgradeTimeout+u.opts.DrainTimeout)
	defer cancel()
	if _, err := u.roll(ctx, func(string) {}); err != nil {
		u.log.Warn("roll to the previous build did not finish: the crashing workers are replaced as they die", "err", err)
	}
}

// rolledBack says why the workers were rolled back to the previous build,
// or "" if they were not.
func (pp *procPool) rolledBack() string {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	return pp.rollback
}
