// The rollout browser's only script: a new step in the step menu reloads the page for it (no inline handlers:
// the Content-Security-Policy allows none).
document.addEventListener("change", (event) => {
  if (event.target.matches("select[data-autosubmit]")) event.target.form.submit();
});
