"""Benchmark evaluation: generate (`runner`), write and read predictions in each benchmark's own layout
(`predictions`), score with the official rules (`scoring`), and render the paper-shaped report (`report`)."""
