// Front-end unit tests (npm test -> vitest run --root js). Pure modules run in node;
// the widget test opts into jsdom with a `// @vitest-environment jsdom` comment.
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.js"],
    environment: "node",
  },
});
