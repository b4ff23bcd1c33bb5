// The Sluice console: the Datasets pages. Served after console.js as one script (console/src/assets.rs).
