package bench

import (
	"fmt"
	"io"
	"math"
	"strings"
)

// Chart writes an SVG of a sweep of fan-out runs: server CPU per delivery
// (and the raw-write floor, when measured) and latency percentiles against
// room size, on a logarithmic size axis.
func Chart(w io.Writer, runs []Result, floor float64) error {
	if len(runs) == 0 {
		return fmt.Errorf("no runs to chart")
	}
	const W, H, L, R, T, B = 760, 360, 70, 70, 40, 50
	pw, ph := float64(W-L-R), float64(H-T-B)
	minX, maxX := math.Log10(float64(runs[0].Conns)), math.Log10(float64(runs[len(runs)-1].Conns))
	if maxX == minX {
		maxX = minX + 1
	}
	maxCPU, maxLat := floor, 0.0
	for _, r := range runs {
		maxCPU = math.Max(maxCPU, r.CPUPerDelivUS)
		maxLat = math.Max(maxLat, r.P99MS)
	}
	maxCPU, maxLat = niceMax(maxCPU), niceMax(maxLat)
	x := func(n int) float64 { return L + (math.Log10(float64(n))-minX)/(maxX-minX)*pw }
	yc := func(v float64) float64 { return T + ph - v/maxCPU*ph }
	yl := func(v float64) float64 { return T + ph - v/maxLat*ph }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", W, H)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", W, H)
	fmt.Fprintf(&b, `<text x="%d" y="20" font-size="14" font-weight="bold">Fan-out, one message at a time: server CPU per delivery and latency vs room size</text>`+"\n", L)
	for i := 0; i <= 4; i++ {
		y := T + ph*float64(i)/4
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e5e7eb"/>`+"\n", L, y, W-R, y)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end" fill="#2563eb">%.1f µs</text>`+"\n", L-6, y+4, maxCPU*(1-float64(i)/4))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" fill="#dc2626">%.0f ms</text>`+"\n", W-R+6, y+4, maxLat*(1-float64(i)/4))
	}
	line := func(color string, dash string, pt func(Result) (float64, float64)) {
		var pts []string
		for _, r := range runs {
			px, py := pt(r)
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", px, py))
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`+"\n", px, py, color)
		}
		fmt.Fprintf(&b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="2" stroke-dasharray="%s"/>`+"\n", strings.Join(pts, " "), color, dash)
	}
	line("#2563eb", "", func(r Result) (float64, float64) { return x(r.Conns), yc(r.CPUPerDelivUS) })
	line("#dc2626", "", func(r Result) (float64, float64) { return x(r.Conns), yl(r.P99MS) })
	line("#f59e0b", "4 3", func(r Result) (float64, float64) { return x(r.Conns), yl(r.P50MS) })
	if floor > 0 {
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#2563eb" stroke-dasharray="2 4"/>`+"\n", L, yc(floor), W-R, yc(floor))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" fill="#2563eb">raw write() floor %.1f µs</text>`+"\n", L+6, yc(floor)-4, floor)
	}
	for _, r := range runs {
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%d</text>`+"\n", x(r.Conns), H-B+18, r.Conns)
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">room members (log scale)</text>`+"\n", L+int(pw/2), H-10)
	fmt.Fprintf(&b, `<text x="%d" y="%d" fill="#2563eb">— CPU per delivery</text><text x="%d" y="%d" fill="#dc2626">— p99 latency</text><text x="%d" y="%d" fill="#f59e0b">- - p50 latency</text>`+"\n",
		L+10, T+14, L+150, T+14, L+270, T+14)
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func niceMax(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= v*1.05 {
			return m * p
		}
	}
	return 10 * p
}
