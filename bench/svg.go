//go:build !windows

package main

import (
	"bytes"
	"fmt"
	"html"
	"math"
	"time"
)

// series is one contender's line in a panel.
type series struct {
	Name  string
	Color string
	X, Y  []float64
	Marks []float64 // x of the upgrades
}

var palette = []string{"#444444", "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2"}

// picture draws requests/s and p99 per second of the seed's test for every
// contender (the baseline's steady state, having no upgrades), with the
// upgrades marked.
func (rep *report) picture() []byte {
	var rps, p99 []series
	for i, c := range rep.Contenders {
		sc := "upgrades"
		if c.Kind == kindBaseline {
			sc = "steady"
		}
		r, ok := rep.medianRun(c.Name, sc)
		if !ok {
			continue
		}
		color := palette[i%len(palette)]
		a := series{Name: c.Name, Color: color, Marks: r.UpgradeMarks}
		b := series{Name: c.Name, Color: color, Marks: r.UpgradeMarks}
		tl := r.Load.Timeline
		// The first and last seconds are partial: left out.
		if len(tl) > 2 {
			tl = tl[1 : len(tl)-1]
		}
		for _, pt := range tl {
			x := float64(pt.Second) + 0.5
			a.X, a.Y = append(a.X, x), append(a.Y, float64(pt.OK))
			b.X, b.Y = append(b.X, x), append(b.Y, float64(pt.P99)/float64(time.Millisecond))
		}
		rps, p99 = append(rps, a), append(p99, b)
	}
	title := fmt.Sprintf("%s — a connection per request, %v clients, %v upgrades (triangles)", rep.Started.UTC().Format("2006-01-02"), rep.Config["concurrency"], rep.Config["upgrades"])
	return drawChart(title, []panel{{"requests/s", rps}, {"p99 latency, ms", p99}})
}

type panel struct {
	YLabel string
	Series []series
}

// drawChart stacks panels sharing the x axis (seconds) and puts a legend
// under them.
func drawChart(title string, panels []panel) []byte {
	const (
		width   = 900.0
		left    = 70.0
		right   = 20.0
		top     = 40.0
		panelH  = 230.0
		gap     = 50.0
		legendH = 30.0
	)
	height := top + float64(len(panels))*(panelH+gap) + legendH
	var b bytes.Buffer
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p(`<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	p(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	p(`<text x="%.0f" y="22" font-size="14">%s</text>`+"\n", left, html.EscapeString(title))

	xMax := 1.0
	for _, pn := range panels {
		for _, s := range pn.Series {
			for _, x := range s.X {
				xMax = math.Max(xMax, x+0.5)
			}
			for _, x := range s.Marks {
				xMax = math.Max(xMax, x+0.5)
			}
		}
	}
	xTicks := niceTicks(xMax)
	xMax = xTicks[len(xTicks)-1]
	plotW := width - left - right
	for i, pn := range panels {
		y0 := top + float64(i)*(panelH+gap)
		yMax := 1.0
		for _, s := range pn.Series {
			for _, y := range s.Y {
				yMax = math.Max(yMax, y)
			}
		}
		yTicks := niceTicks(yMax * 1.05)
		yMax = yTicks[len(yTicks)-1]
		px := func(x float64) float64 { return left + x/xMax*plotW }
		py := func(y float64) float64 { return y0 + panelH - y/yMax*panelH }
		for _, t := range yTicks {
			p(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e5e5e5"/>`+"\n", left, py(t), left+plotW, py(t))
			p(`<text x="%.1f" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, py(t)+4, tickLabel(t))
		}
		for _, t := range xTicks {
			p(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e5e5e5"/>`+"\n", px(t), y0, px(t), y0+panelH)
			p(`<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", px(t), y0+panelH+16, tickLabel(t))
		}
		p(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#888"/>`+"\n", left, y0, plotW, panelH)
		p(`<text transform="translate(16 %.1f) rotate(-90)" text-anchor="middle">%s</text>`+"\n", y0+panelH/2, html.EscapeString(pn.YLabel))
		if i == len(panels)-1 {
			p(`<text x="%.1f" y="%.1f" text-anchor="middle">seconds</text>`+"\n", left+plotW/2, y0+panelH+32)
		}
		for _, s := range pn.Series {
			if len(s.X) > 0 {
				var pts bytes.Buffer
				for j := range s.X {
					fmt.Fprintf(&pts, "%.1f,%.1f ", px(s.X[j]), py(s.Y[j]))
				}
				p(`<polyline fill="none" stroke="%s" stroke-width="1.8" points="%s"/>`+"\n", s.Color, bytes.TrimSpace(pts.Bytes()))
			}
			for _, m := range s.Marks {
				x := px(m)
				p(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-dasharray="3 3" stroke-opacity="0.5"/>`+"\n", x, y0, x, y0+panelH, s.Color)
				p(`<path d="M%.1f %.1f l-5 -8 h10 z" fill="%s"/>`+"\n", x, y0, s.Color)
			}
		}
	}
	// Legend.
	var names []series
	if len(panels) > 0 {
		names = panels[0].Series
	}
	x := left
	ly := height - legendH/2
	for _, s := range names {
		p(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="3"/>`+"\n", x, ly, x+20, ly, s.Color)
		p(`<text x="%.1f" y="%.1f">%s</text>`+"\n", x+25, ly+4, html.EscapeString(s.Name))
		x += 35 + 7.5*float64(len(s.Name))
	}
	p("</svg>\n")
	return b.Bytes()
}

// niceTicks returns 0 and round steps (1, 2 or 5 × 10^k) up to at least
// hi, about five of them.
func niceTicks(hi float64) []float64 {
	if hi <= 0 || math.IsNaN(hi) || math.IsInf(hi, 0) {
		hi = 1
	}
	raw := hi / 5
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag
	for _, m := range []float64{1, 2, 5, 10} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	var out []float64
	for i := 0; ; i++ {
		t := float64(i) * step
		out = append(out, t)
		if t >= hi {
			return out
		}
	}
}

func tickLabel(v float64) string {
	switch {
	case v >= 1000 && math.Mod(v, 1000) == 0:
		return fmt.Sprintf("%.0fk", v/1000)
	case v >= 1000:
		return fmt.Sprintf("%.1fk", v/1000)
	case v == math.Trunc(v):
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.2g", v)
}
