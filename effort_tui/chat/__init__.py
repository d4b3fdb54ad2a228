"""The chat screen's parts, one concern each; `effort_tui.screens.chat.ChatScreen` composes them.

`conversation` (the open conversation and its history rows), `answer` (the answer in flight,
streamed into its widget at a reading pace), `effort_dial` (the effort keys and what they say),
`sampling` (how this conversation samples). None of them imports the app.
"""
