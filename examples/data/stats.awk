NR > 1 { n += 1; sum += $2; if ($2 > max) max = $2 }
END { printf "rows %d\nsum %d\nmax %d\nmean %.3f\n", n, sum, max, sum / n }
