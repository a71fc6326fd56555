// demoimage builds the demo app's images (berth-demo:<version>) for the
// quick start: the demo app compiled statically into an image with nothing
// else in it. An image whose source is unchanged is kept.
//
//	go run ./internal/testrig/demoimage v1 v2
package main

import (
	"fmt"
	"os"
	"time"

	"github.com/berthhq/berth/internal/testrig"
)

func main() {
	versions := os.Args[1:]
	if len(versions) == 0 {
		versions = []string{"v1"}
	}
	for _, v := range versions {
		start := time.Now()
		tag, err := testrig.BuildDemoImage(v)
		if err != nil {
			fmt.Fprintf(os.Stderr, "demoimage: %s: %v\n", v, err)
			os.Exit(1)
		}
		fmt.Printf("image %s ready (%s)\n", tag, time.Since(start).Round(10*time.Millisecond))
	}
}
