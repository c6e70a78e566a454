package upgrader_test

import (
	"fmt"

	"github.com/gohandoff/handoff/upgrader"
)

// The --ready flags of hello and handoff run.
func ExampleParseReady() {
	for _, s := range []string{"notify", "delay:1.5s", "later"} {
		d, err := upgrader.ParseReady(s)
		fmt.Println(d, err)
	}
	// Output:
	// 0s <nil>
	// 1.5s <nil>
	// 0s invalid ready mode "later": want notify or delay:DUR (e.g. delay:1s)
}
